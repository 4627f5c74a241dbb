"""Score a run against the generator's ground truth: precision and recall at IoU >= 0.5 for plates, vehicles
(any class, then class-aware per class), body colours (a detection counts only with the right colour), faces
(found, then found and named correctly). Real-photo vehicles are also scored on their own."""

from __future__ import annotations

from typing import Any

from .boxes import Box
from .metrics import Score, match


def _box(entry: dict[str, Any]) -> Box:
    return Box.of(entry["box"])


def _score(truths: list[dict], found: list[dict], key: str | None = None, value: str | None = None) -> Score:
    """Matching with `key` equal on both sides; with `value`, only truths/detections with that value count."""
    if value is not None:
        assert key is not None
        truths = [t for t in truths if t[key] == value]
        found = [f for f in found if f[key] == value]
    same = (lambda t, f: t[key] == f[key]) if key else None
    return match(truths, found, _box, _box, 0.5, same)[1]


ROWS = ["plates", "vehicles (any class)", "vehicles (class-aware)", "  car", "  truck", "  motorcycle",
        "  real-photo vehicles", "colours (box + colour)", "faces", "faces (named right)"]


def evaluate(truth: dict[str, Any], report: dict[str, Any]) -> dict[str, Score]:
    rows: dict[str, Score] = {name: Score() for name in ROWS}

    def add(name: str, s: Score) -> None:
        rows.setdefault(name, Score()).add(s)

    per_image = report["per_image"]
    for name, gt in truth["images"].items():
        got = per_image.get(name, {})
        plates = [v["plate"] for v in gt["vehicles"] if v.get("plate")]
        add("plates", _score(plates, got.get("plates", [])))
        vehicles = gt["vehicles"]
        found = got.get("vehicles", [])
        add("vehicles (any class)", _score(vehicles, found))
        add("vehicles (class-aware)", _score(vehicles, found, "class"))
        for cls in ("car", "truck", "motorcycle"):
            add(f"  {cls}", _score(vehicles, found, "class", cls))
        photo = [v for v in vehicles if v["source"] == "photo"]
        if photo:  # detections near a real photo's vehicle only: the rest are the drawn ones' business
            near = [f for f in found if any(_box(f).iou(_box(v)) > 0 for v in photo)]
            add("  real-photo vehicles", _score(photo, near))
        add("colours (box + colour)", _score(vehicles, found, "colour"))
        faces = gt["faces"]
        found_faces = got.get("faces", [])
        add("faces", _score(faces, found_faces))
        add("faces (named right)", _score(faces, found_faces, "identity"))
    return rows


def table(rows: dict[str, Score]) -> str:
    lines = [f"{'':26} {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>4} {'fn':>4}"]
    for name, s in rows.items():
        lines.append(f"{name:26} {s.precision:9.3f} {s.recall:7.3f} {s.tp:4d} {s.fp:4d} {s.fn:4d}")
    return "\n".join(lines)
