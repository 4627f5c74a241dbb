"""The image example's sample data: deterministic per seed, and its ground truth consistent with the pictures
(boxes inside the frame, plates on their vehicles, labels from the known vocabularies)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "images"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from imaging import generate  # noqa: E402
from imaging.boxes import Box  # noqa: E402
from imaging.palette import PALETTE  # noqa: E402
from imaging.scene_photos import GALLERY_LFW  # noqa: E402
from imaging.scene_vehicles import CLASSES  # noqa: E402

PLATE_TEXT = re.compile(r"^[ABEKMHOPCTYX]\d{3}[ABEKMHOPCTYX]{2} \d{2,3}$")
IDENTITIES = {"astronaut", "unknown", *(f"lfw-{i:02d}" for i in GALLERY_LFW)}


def inside(inner: Box, outer: Box) -> bool:
    return outer.x <= inner.x and outer.y <= inner.y and inner.x + inner.w <= outer.x + outer.w \
        and inner.y + inner.h <= outer.y + outer.h


def test_same_seed_same_image_and_truth() -> None:
    for index in (0, 5, 11):
        name_a, img_a, truth_a = generate.make(index, seed=3)
        name_b, img_b, truth_b = generate.make(index, seed=3)
        assert name_a == name_b and truth_a == truth_b
        assert np.array_equal(img_a, img_b)
    _, other, _ = generate.make(0, seed=4)
    assert not np.array_equal(generate.make(0, seed=3)[1], other)


def test_generate_writes_identical_files_twice(tmp_path: Path) -> None:
    first = generate.generate(tmp_path / "a", count=2, seed=9)
    second = generate.generate(tmp_path / "b", count=2, seed=9)
    assert first == second
    names = sorted(first["images"])
    assert names == sorted(p.name for p in (tmp_path / "a").glob("*.jpg"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads((tmp_path / "a" / generate.TRUTH_FILE).read_text()) == first


@pytest.mark.parametrize("index", range(12))
def test_ground_truth_is_consistent(index: int) -> None:
    name, img, truth = generate.make(index, seed=7)
    h, w = img.shape[:2]
    assert (truth["width"], truth["height"]) == (w, h) and w <= 1280 and h <= 720
    assert name.startswith(truth["kind"])
    frame = Box(0, 0, w, h)
    boxes = []
    for v in truth["vehicles"]:
        box = Box(*v["box"])
        assert v["class"] in CLASSES and v["colour"] in PALETTE and box.w > 0 and box.h > 0
        assert inside(box, frame)
        boxes.append(box)
        if v["plate"] is not None:
            assert PLATE_TEXT.match(v["plate"]["text"]), v["plate"]["text"]
            plate = Box(*v["plate"]["box"])
            assert inside(plate, box) and 3.5 < plate.w / plate.h < 6
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "vehicles never occlude"
    for face in truth["faces"]:
        assert face["identity"] in IDENTITIES and inside(Box(*face["box"]), frame)
    if truth["kind"] == "scene":
        assert 1 <= len(truth["vehicles"]) <= 5
        assert all(v["plate"] for v in truth["vehicles"]), "every vehicle in a scene carries a plate"
    if truth["kind"] == "portrait":
        assert [f["identity"] for f in truth["faces"]] == ["astronaut"]


def test_scenes_differ_and_show_every_class() -> None:
    seen = set()
    for index in range(12):
        _, _, truth = generate.make(index, seed=7)
        seen |= {v["class"] for v in truth["vehicles"]}
    assert seen == set(CLASSES)
