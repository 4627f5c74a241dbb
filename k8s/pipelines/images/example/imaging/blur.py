"""Anonymise regions: pixelate then blur, inside the given boxes only.

Each box is processed as an isolated crop and written back, so no pixel outside the boxes is read into the result
or changed — checked exactly in the tests. The mosaic cells scale with the box (a plate gets ~2 rows of cells,
coarser than its characters), so small text is unreadable whatever its size."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from .boxes import Box


def anonymise(image: np.ndarray, boxes: Iterable[Box], cells_high: int = 2) -> tuple[np.ndarray, list[Box]]:
    """A copy of `image` with every box pixelated (`cells_high` cells over the box's height, square cells) and
    smoothed; returns the copy and the boxes as clipped to the image."""
    out = image.copy()
    done: list[Box] = []
    for box in boxes:
        b = box.clip(image.shape[1], image.shape[0])
        if b.w < 2 or b.h < 2:
            continue
        roi = out[b.y:b.y + b.h, b.x:b.x + b.w]
        cell = max(2, b.h // cells_high)
        small = cv2.resize(roi, (max(1, b.w // cell), max(1, b.h // cell)), interpolation=cv2.INTER_AREA)
        mosaic = cv2.resize(small, (b.w, b.h), interpolation=cv2.INTER_NEAREST)
        roi[:] = cv2.GaussianBlur(mosaic, (0, 0), max(1.0, cell / 3), borderType=cv2.BORDER_REFLECT)
        done.append(b)
    return out, done


def high_frequency(image: np.ndarray, box: Box) -> float:
    """Variance of the Laplacian inside a box: how much fine detail (edges of characters) it holds."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    b = box.clip(gray.shape[1], gray.shape[0])
    return float(cv2.Laplacian(gray[b.y:b.y + b.h, b.x:b.x + b.w].astype(np.float64), cv2.CV_64F).var())
