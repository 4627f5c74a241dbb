"""The empty highway a scene starts from, seen from the side of the road: sky, a treeline, a grass verge with a
guardrail, three lanes of textured asphalt with dashed markings, a gravel shoulder. Horizontal bands, as a road
seen from a roadside camera is; the vehicle detector's road model relies on nothing more specific than that."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LANES = 3
LANE_SCALES = (0.78, 0.89, 1.0)  # far lanes look smaller


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    road_top: int
    road_bottom: int

    @property
    def lane_height(self) -> float:
        return (self.road_bottom - self.road_top) / LANES

    def ground(self, lane: int) -> int:
        """Where the wheels of a vehicle in `lane` (0 = farthest) touch the road."""
        return int(round(self.road_top + (lane + 0.8) * self.lane_height))

    def scale(self, lane: int) -> float:
        return LANE_SCALES[lane] * self.width / 1280


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float, blur: int) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    return cv2.GaussianBlur(noise, (blur, blur), 0) if blur > 1 else noise


def _band(img: np.ndarray, y0: int, y1: int, colour: tuple[float, float, float], grain: np.ndarray) -> None:
    img[y0:y1] = np.clip(np.array(colour, np.float32)[None, None, :] + grain[y0:y1, :, None], 0, 255)


def road(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, Layout]:
    h, w = height, width
    img = np.zeros((h, w, 3), np.float32)
    layout = Layout(w, h, int(0.36 * h), int(0.94 * h))
    tree_top, verge_top = int(0.215 * h), int(0.30 * h)
    # sky: a vertical gradient with a few soft clouds high up
    top, low = np.array([205, 160, 118]) + rng.integers(-12, 12, 3), np.array([236, 222, 206])
    t = np.linspace(0, 1, tree_top + 8, dtype=np.float32)[:, None, None]
    img[: tree_top + 8] = top * (1 - t) + low * t
    for _ in range(int(rng.integers(0, 4))):
        cloud = np.zeros((h, w), np.float32)
        centre = (int(rng.integers(0, w)), int(rng.integers(8, int(0.12 * h))))
        cv2.ellipse(cloud, centre, (int(rng.integers(40, 140)), int(rng.integers(8, 22))), 0, 0, 360, 1.0, -1)
        cloud = cv2.GaussianBlur(cloud, (0, 0), 9)[:, :, None] * 0.7
        img = img * (1 - cloud) + 245 * cloud
    fine = _texture(rng, (h, w), 14, 3)
    # treeline with a gently uneven top, grass verge, guardrail on posts
    edge = tree_top + (3 * np.sin(np.arange(w) / rng.uniform(9, 17)) + 2 * np.sin(np.arange(w) / 5.3)).astype(int)
    trees = np.clip(np.array([46, 84, 44], np.float32) + 1.6 * _texture(rng, (h, w), 14, 5)[:, :, None], 0, 255)
    rows = np.arange(h)[:, None]
    tree_mask = (rows >= edge[None, :]) & (rows < verge_top)
    img[tree_mask] = trees[tree_mask]
    _band(img, verge_top, layout.road_top, (62, 128, 92), fine)
    rail_y, rail_h = int(0.318 * h), max(3, int(0.011 * h))
    for x in range(int(rng.integers(0, 40)), w, max(30, w // 24)):
        cv2.rectangle(img, (x, rail_y), (x + 3, int(0.345 * h)), (70, 72, 74), -1)
    _band(img, rail_y, rail_y + rail_h, (168, 168, 172), fine * 0.3)
    # asphalt: grey with a slight blue cast, coarse and fine grain, lighter in the distance
    base = float(rng.integers(80, 104))
    grain = _texture(rng, (h, w), 9, 5) + fine * 0.6
    _band(img, layout.road_top, layout.road_bottom, (base + 4, base + 1, base - 2), grain)
    ramp = np.linspace(8, -6, layout.road_bottom - layout.road_top, dtype=np.float32)[:, None, None]
    img[layout.road_top:layout.road_bottom] += ramp
    _band(img, layout.road_bottom, h, (120, 138, 150), _texture(rng, (h, w), 16, 3))
    _markings(img, layout, rng)
    return np.clip(img, 0, 255).astype(np.uint8), layout


def _markings(img: np.ndarray, layout: Layout, rng: np.random.Generator) -> None:
    paint = (228, 230, 232)
    thick = max(2, int(0.008 * layout.height))
    for y in (layout.road_top + thick, layout.road_bottom - 2 * thick):
        cv2.rectangle(img, (0, y), (layout.width, y + thick), paint, -1)
    dash, gap = int(0.06 * layout.width), int(0.09 * layout.width)
    for lane in range(1, 3):
        y = int(layout.road_top + lane * layout.lane_height)
        for x in range(-int(rng.integers(0, dash + gap)), layout.width, dash + gap):
            cv2.rectangle(img, (x, y), (x + dash, y + thick), paint, -1)
