"""Anonymisation in the image example: plate-blur (and face-blur) change the pixels inside the boxes they report
enough to erase fine detail, and leave every other pixel exactly as the original decodes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "images"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from imaging import generate, workers  # noqa: E402
from imaging.blur import anonymise, high_frequency  # noqa: E402
from imaging.boxes import Box  # noqa: E402


def item_for(path: Path) -> dict[str, Any]:
    return {"id": path.name, "name": path.name, "data": {"uri": path.resolve().as_uri()}}


def outside_mask(shape: tuple[int, ...], boxes: list[list[int]]) -> np.ndarray:
    keep = np.ones(shape[:2], bool)
    for x, y, w, h in boxes:
        keep[y:y + h, x:x + w] = False
    return keep


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("scene")
    truth = generate.generate(folder, count=2, seed=7)
    return folder / "scene-000.jpg", truth["images"]["scene-000.jpg"]


def test_plate_blur_changes_plates_and_nothing_else(scene: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, truth = scene
    found = workers.plate_detect(item_for(path), tmp_path)
    assert len(found["plates"]) >= 2
    result = workers.plate_blur({**item_for(path), "data": found}, tmp_path)
    assert result["plates"] == len(found["plates"]) and result["original"] == str(path)
    original = cv2.imread(str(path))
    blurred = cv2.imread(result["blurred"], cv2.IMREAD_UNCHANGED)
    assert result["blurred"].endswith(".png") and blurred.shape == original.shape
    keep = outside_mask(original.shape, result["boxes"])
    assert np.array_equal(original[keep], blurred[keep]), "a pixel outside the blurred boxes changed"
    plates = [Box(*v["plate"]["box"]) for v in truth["vehicles"]]
    blurred_plates = [p for p in plates if any(p.iou(Box(*b)) > 0.3 for b in result["boxes"])]
    assert len(blurred_plates) >= 2
    for plate in blurred_plates:
        before, after = high_frequency(original, plate), high_frequency(blurred, plate)
        assert after < 0.1 * before, f"plate {plate}: detail {before:.0f} -> {after:.0f}, text may be readable"
        x, y, w, h = plate
        changed = np.any(original[y:y + h, x:x + w] != blurred[y:y + h, x:x + w], axis=2).mean()
        assert changed > 0.8


def test_anonymise_touches_only_its_boxes() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    boxes = [Box(10, 10, 50, 12), Box(150, 90, 80, 60), Box(-5, 100, 20, 30)]  # one partly outside the frame
    out, done = anonymise(image, boxes)
    assert done == [Box(10, 10, 50, 12), Box(150, 90, 50, 30), Box(0, 100, 15, 20)]
    keep = outside_mask(image.shape, [list(b) for b in done])
    assert np.array_equal(out[keep], image[keep])
    for b in done:
        assert high_frequency(out, b) < 0.05 * high_frequency(image, b)
    assert image.flags.writeable and not np.shares_memory(out, image)
