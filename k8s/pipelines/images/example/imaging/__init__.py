"""The image tagging and processing example's algorithms: a synthetic highway-scene generator with known ground
truth, and classical detectors (OpenCV Haar cascades, road-model subtraction, shape and colour features) that
look only at pixels. Importable as `imaging` with `examples/images` on sys.path."""
