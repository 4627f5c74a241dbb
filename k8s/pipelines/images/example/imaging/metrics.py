"""Precision and recall by greedy one-to-one matching at an IoU threshold (the PASCAL VOC rule, one image at a
time): the highest-IoU pairs match first, each ground-truth object and each detection at most once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .boxes import Box

T = TypeVar("T")
D = TypeVar("D")


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Score) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def match(truths: Sequence[T], detections: Sequence[D], truth_box: Callable[[T], Box], det_box: Callable[[D], Box],
          iou: float = 0.5, same: Callable[[T, D], bool] | None = None) -> tuple[list[tuple[T, D]], Score]:
    """Matched (truth, detection) pairs and the score; `same` makes matching class-aware."""
    pairs = []
    for i, t in enumerate(truths):
        for j, d in enumerate(detections):
            overlap = truth_box(t).iou(det_box(d))
            if overlap >= iou and (same is None or same(t, d)):
                pairs.append((overlap, i, j))
    used_t, used_d, matched = set(), set(), []
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_t and j not in used_d:
            used_t.add(i)
            used_d.add(j)
            matched.append((truths[i], detections[j]))
    return matched, Score(len(matched), len(detections) - len(matched), len(truths) - len(matched))
