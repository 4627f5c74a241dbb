"""The example's in-process workers, in batchmesh's worker shape `fn(item, output_dir) -> dict`, registered by
name so a pipeline can chain them: `chain: [{worker: plate-detect}, {worker: plate-blur}]`.

Each result carries what the next step needs (the image path, the item's name, the original's path), because a
chain hands step i+1 exactly step i's result as its `data`. Detect/classify/tag steps write no files.

    plate-detect → plate-blur                    licence plates, blurred into <output_dir>/<stem>.png
    vehicle-detect → vehicle-classify            boxes, then class and body colour per vehicle (+ counts)
    face-detect → face-tag → face-blur           faces, identities against the gallery, blurred copy
    delete-original                              after the join: the original image, now blurred everywhere
    colour-chart                                 the reduce's final aggregate -> OUT/colours.png
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2

from batchmesh import worker
from services.core import Settings

from . import detectors, faces, plates, vehicles  # noqa: F401  (plates/vehicles/faces register detectors)
from .blur import anonymise
from .boxes import Box
from .files import image_path, read, write_png
from .report import colour_chart

# Parallelism comes from worker replicas, one item per process at a time: OpenCV's own thread pool would only
# oversubscribe the cores (and make the sequential baseline look faster than one core).
cv2.setNumThreads(int(os.environ.get("IMAGING_CV_THREADS", "1")))

detectors.register_onnx_from_env()  # a user's ONNX model, by environment (see detectors.py)
PLATE_DETECTOR = os.environ.get("IMAGING_PLATE_DETECTOR", "plates")
VEHICLE_DETECTOR = os.environ.get("IMAGING_VEHICLE_DETECTOR", "vehicles")
FACE_DETECTOR = os.environ.get("IMAGING_FACE_DETECTOR", "faces")
PLATE_MARGIN = (0.08, 0.25)  # blur a little beyond the detected outline: the border and a plate frame
FACE_MARGIN = (0.1, 0.12)


def _carry(item: dict[str, Any], path: Path) -> dict[str, Any]:
    """What every result passes on: the item's name, the image it worked on, the original it came from, and the
    regions earlier steps anonymised (recognition must not read a blurred plate as paint)."""
    data = item.get("data") or {}
    return {"name": item.get("name") or data.get("name") or path.name, "image": str(path),
            "original": data.get("original") or str(path), "anonymised": data.get("anonymised", [])}


def _boxes(entries: list[dict[str, Any]]) -> list[Box]:
    return [Box.of(e["box"]) for e in entries]


@worker("plate-detect", writes=False)
def plate_detect(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    path = image_path(item["data"])
    found = detectors.get(PLATE_DETECTOR).detect(read(path))
    return {**_carry(item, path), "plates": [d.to_json() for d in found]}


@worker("plate-blur")
def plate_blur(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    data = item["data"]
    path = image_path(data)
    image = read(path)
    found = data.get("plates")
    if found is None:  # used alone, without plate-detect before it
        found = [d.to_json() for d in detectors.get(PLATE_DETECTOR).detect(image)]
    blurred, boxes = anonymise(image, [b.pad(*PLATE_MARGIN) for b in _boxes(found)], cells_high=2)
    out = write_png(blurred, output_dir / f"{path.stem}.png", share=True)  # recognition and faces read it
    carried = _carry(item, path)
    done = [b.to_list() for b in boxes]
    return {**carried, "blurred": str(out), "plates": len(found), "boxes": done,
            "anonymised": carried["anonymised"] + done}


@worker("vehicle-detect", writes=False)
def vehicle_detect(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    path = image_path(item["data"])
    found = detectors.get(VEHICLE_DETECTOR).detect(read(path))
    return {**_carry(item, path), "vehicles": [d.to_json() for d in found]}


@worker("vehicle-classify")
def vehicle_classify(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Class and colour from the pixels in each box. `counts` and `colours` are this image's tallies, ready for
    a reduce to sum; the details also go to <output_dir>/vehicles.json."""
    data = item["data"]
    path = image_path(data)
    image = read(path)
    boxes = _boxes(data["vehicles"]) if "vehicles" in data else \
        [d.box for d in detectors.get(VEHICLE_DETECTOR).detect(image)]
    described = vehicles.describe(image, boxes, _boxes([{"box": b} for b in data.get("anonymised", [])]))
    result = {**_carry(item, path), "vehicles": described,
              "counts": dict(Counter(v["class"] for v in described)),
              "colours": dict(Counter(v["colour"] for v in described))}
    (output_dir / "vehicles.json").write_text(json.dumps(result))
    return result


@worker("face-detect", writes=False)
def face_detect(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    path = image_path(item["data"])
    found = detectors.get(FACE_DETECTOR).detect(read(path))
    return {**_carry(item, path), "faces": [{"box": d.box.to_list()} for d in found]}


@worker("face-tag", writes=False)
def face_tag(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    data = item["data"]
    path = image_path(data)
    image = read(path)
    boxes = _boxes(data["faces"]) if "faces" in data else [d.box for d in detectors.get(FACE_DETECTOR).detect(image)]
    gallery = faces.default_gallery()
    tagged = []
    for box in boxes:
        identity, distance = gallery.tag(faces.embed(image, box))
        tagged.append({"box": box.to_list(), "identity": identity, "distance": round(distance, 4)})
    return {**_carry(item, path), "faces": tagged, "identities": dict(Counter(f["identity"] for f in tagged))}


@worker("face-blur")
def face_blur(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    data = item["data"]
    path = image_path(data)
    image = read(path)
    found = data["faces"] if "faces" in data else \
        [{"box": d.box.to_list()} for d in detectors.get(FACE_DETECTOR).detect(image)]
    blurred, boxes = anonymise(image, [b.pad(*FACE_MARGIN) for b in _boxes(found)], cells_high=8)
    out = write_png(blurred, output_dir / f"{path.stem}.png")
    carried = _carry(item, path)
    done = [b.to_list() for b in boxes]
    return {**carried, "blurred": str(out), "faces": found, "identities": data.get("identities", {}), "boxes": done,
            "anonymised": carried["anonymised"] + done}


@worker("delete-original", writes=False)
def delete_original(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Runs after the join: every image of the batch has its blurred copy, so the original can go. Idempotent (a
    retry finds it gone). The blurred copy must exist: an original is never deleted without one."""
    data = item["data"]
    original, blurred = Path(data["original"]), Path(data["blurred"])
    if not blurred.is_file():
        raise FileNotFoundError(f"no blurred copy {blurred}: the original {original} is kept")
    at = time.time()  # read before the unlink: the file was still there at `at` (the e2e test compares it)
    existed = original.exists()
    original.unlink(missing_ok=True)
    return {"original": str(original), "blurred": str(blurred), "deleted": existed, "at": at}


@worker("colour-chart")
def colour_chart_worker(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The reduce's final aggregate in, OUT/colours.png out (the run's out dir, next to report.json)."""
    colours = item["data"]["aggregate"].get("colours") or {}
    path = colour_chart(dict(sorted(colours.items(), key=lambda kv: -kv[1])), Settings().out_dir / "colours.png")
    return {"chart": str(path), "colours": colours}
