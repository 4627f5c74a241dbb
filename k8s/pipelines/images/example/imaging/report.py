"""The batch's totals — vehicles per class, the colour histogram, plates and faces — and a bar chart of the
colours drawn with OpenCV (no plotting library needed). The same sums a pipeline's reduce makes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .palette import NAMES, PALETTE


def totals(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Fold per-image results (each with `vehicles`, `plates`, `faces` lists as the sequential run keeps them)."""
    counts: Counter[str] = Counter()
    colours: Counter[str] = Counter()
    identities: Counter[str] = Counter()
    images = plates = 0
    for r in results:
        images += 1
        plates += len(r.get("plates", []))
        counts.update(v["class"] for v in r.get("vehicles", []))
        colours.update(v["colour"] for v in r.get("vehicles", []))
        identities.update(f["identity"] for f in r.get("faces", []))
    return {"images": images, "vehicles": sum(counts.values()), "plates": plates,
            "counts": dict(sorted(counts.items())),
            "colours": {n: colours[n] for n in [*NAMES, *sorted(set(colours) - set(NAMES))] if colours[n]},
            "faces": dict(sorted(identities.items()))}


def colour_chart(colours: dict[str, int], path: Path, width: int = 640, height: int = 360) -> Path:
    """One bar per colour, painted in that colour (outlined, so white shows on white), count on top."""
    img = np.full((height, width, 3), 250, np.uint8)
    names = list(colours) or ["none"]
    top = max([*colours.values(), 1])
    base, left, gap = height - 40, 20, 10
    bar = max(8, (width - 2 * left - gap * (len(names) - 1)) // len(names))
    for i, name in enumerate(names):
        value = colours.get(name, 0)
        x = left + i * (bar + gap)
        y = base - int((base - 64) * value / top)  # the tallest bar stops below the title
        cv2.rectangle(img, (x, y), (x + bar, base), PALETTE.get(name, (128, 128, 128)), -1)
        cv2.rectangle(img, (x, y), (x + bar, base), (60, 60, 60), 1)
        cv2.putText(img, str(value), (x + 4, y - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
        cv2.putText(img, name[:7], (x, base + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (30, 30, 30), 1, cv2.LINE_AA)
    cv2.putText(img, "vehicles by colour", (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (30, 30, 30), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")
    return path
