"""Axis-aligned boxes `(x, y, w, h)` in pixels, the one geometry every detector, blur and metric speaks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Box(NamedTuple):
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Box:
        x, y, w, h = (int(round(v)) for v in values)
        return cls(x, y, w, h)

    @property
    def area(self) -> int:
        return max(0, self.w) * max(0, self.h)

    def iou(self, other: Box) -> float:
        ix = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        iy = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        if ix <= 0 or iy <= 0:
            return 0.0
        inter = ix * iy
        return inter / float(self.area + other.area - inter)

    def overlaps(self, other: Box, margin: int = 0) -> bool:
        return not (self.x + self.w + margin <= other.x or other.x + other.w + margin <= self.x
                    or self.y + self.h + margin <= other.y or other.y + other.h + margin <= self.y)

    def pad(self, fx: float, fy: float | None = None) -> Box:
        """Grown by a fraction of its own size on each side (detectors box tightly; blurs want a margin)."""
        dx, dy = int(round(self.w * fx)), int(round(self.h * (fx if fy is None else fy)))
        return Box(self.x - dx, self.y - dy, self.w + 2 * dx, self.h + 2 * dy)

    def clip(self, width: int, height: int) -> Box:
        x0, y0 = max(0, self.x), max(0, self.y)
        x1, y1 = min(width, self.x + self.w), min(height, self.y + self.h)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def scale(self, factor: float) -> Box:
        return Box.of((self.x * factor, self.y * factor, self.w * factor, self.h * factor))

    def to_list(self) -> list[int]:
        return [int(self.x), int(self.y), int(self.w), int(self.h)]
