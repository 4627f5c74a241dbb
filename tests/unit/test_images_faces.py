"""Faces in the image example: the Haar cascade finds the astronaut in scikit-image's photo, the gallery names
her (and calls a stranger "unknown"), and the face chain blurs her face and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "images"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from imaging import faces, scene_photos, workers  # noqa: E402
from imaging.blur import high_frequency  # noqa: E402
from imaging.boxes import Box  # noqa: E402


def test_finds_and_names_the_astronaut() -> None:
    photo = scene_photos.astronaut()
    found = faces.FaceDetector().detect(photo)
    assert len(found) == 1
    assert found[0].box.iou(scene_photos.ASTRONAUT_FACE) >= 0.5
    identity, distance = faces.default_gallery().tag(faces.embed(photo, found[0].box))
    assert identity == "astronaut" and distance < faces.MAX_DISTANCE


@pytest.mark.parametrize("index", scene_photos.STRANGER_LFW[:4])
def test_strangers_are_unknown(index: int) -> None:
    picture, _ = scene_photos.lfw_face(index, 110)
    found = faces.FaceDetector().detect(picture)
    assert found, "the cascade should find an upscaled LFW face"
    identity, distance = faces.default_gallery().tag(faces.embed(picture, found[0].box))
    assert identity == "unknown", f"stranger {index} matched {identity} at {distance:.3f}"


def test_gallery_people_are_named_at_another_size() -> None:
    for index in scene_photos.GALLERY_LFW:
        picture, _ = scene_photos.lfw_face(index, 140)  # enrolled from the 100 px rendering
        found = faces.FaceDetector().detect(picture)
        identity, _ = faces.default_gallery().tag(faces.embed(picture, found[0].box))
        assert identity == f"lfw-{index:02d}"


def test_face_chain_blurs_the_face_only(tmp_path: Path) -> None:
    path = tmp_path / "portrait.jpg"
    cv2.imwrite(str(path), scene_photos.astronaut())
    item = {"id": path.name, "name": path.name, "data": {"uri": path.as_uri()}}
    found = workers.face_detect(item, tmp_path)
    tagged = workers.face_tag({**item, "data": found}, tmp_path)
    assert [f["identity"] for f in tagged["faces"]] == ["astronaut"]
    result = workers.face_blur({**item, "data": tagged}, tmp_path / "out")
    original, blurred = cv2.imread(str(path)), cv2.imread(result["blurred"])
    keep = np.ones(original.shape[:2], bool)
    for x, y, w, h in result["boxes"]:
        keep[y:y + h, x:x + w] = False
    assert np.array_equal(original[keep], blurred[keep])
    face = Box(*tagged["faces"][0]["box"])
    assert high_frequency(blurred, face) < 0.1 * high_frequency(original, face)
    assert Box(*result["boxes"][0]).iou(scene_photos.ASTRONAUT_FACE) > 0.5
