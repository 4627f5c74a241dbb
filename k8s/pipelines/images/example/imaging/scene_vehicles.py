"""Side-view vehicle sprites for the generator, one per class, with shapes that differ the way real ones do:
a car is low with a cabin on a longer body and two wheels; a truck is long and tall, a box behind a cab, three
or more small wheels; a motorcycle is short, two big wheels, a rider on top.

Sprites are drawn facing right in "length units" (coordinates multiplied by the length in pixels) and carry a
mask (exact ground-truth extent) and a plate slot, so the caller pastes a plate that reads the right way round
even on a sprite flipped to face left."""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

GLASS = (172, 150, 128)  # side windows reflect the sky
TYRE = (26, 26, 28)
HUB = (168, 168, 172)
TRIM = (58, 58, 60)
CLASSES = ("car", "truck", "motorcycle")


@dataclass
class Sprite:
    image: np.ndarray  # BGR
    mask: np.ndarray  # uint8, 255 where the vehicle is
    plate_slot: tuple[int, int, int]  # (x, y, width) of the plate's top-left corner, facing right

    def flipped(self) -> Sprite:
        x, y, w = self.plate_slot
        return Sprite(self.image[:, ::-1].copy(), self.mask[:, ::-1].copy(), (self.image.shape[1] - x - w, y, w))


class _Canvas:
    def __init__(self, length: int, height_units: float, colour: tuple[int, int, int], rng: random.Random):
        self.L = float(length)
        self.h = int(round(height_units * length)) + 2
        self.w = length + 2
        self.image = np.zeros((self.h, self.w, 3), np.uint8)
        self.mask = np.zeros((self.h, self.w), np.uint8)
        self.body = np.zeros((self.h, self.w), np.uint8)
        shift = rng.randint(-10, 10)  # mostly brightness: per-channel jitter would tint black and white
        self.colour = tuple(min(255, max(0, c + shift + rng.randint(-3, 3))) for c in colour)

    def pts(self, units: list[tuple[float, float]]) -> np.ndarray:
        return np.array([[round(x * self.L), round(y * self.L)] for x, y in units], np.int32)

    def paint_body(self, *polys: list[tuple[float, float]]) -> None:
        for poly in polys:
            cv2.fillPoly(self.body, [self.pts(poly)], 255, cv2.LINE_AA)

    def fill(self, poly: list[tuple[float, float]], colour: tuple[int, ...]) -> None:
        cv2.fillPoly(self.image, [self.pts(poly)], colour, cv2.LINE_AA)
        cv2.fillPoly(self.mask, [self.pts(poly)], 255, cv2.LINE_AA)

    def shade_body(self) -> None:
        """Body paint lit from above: lighter at the top, darker low down, blended at anti-aliased edges."""
        ramp = np.linspace(1.12, 0.82, self.h, dtype=np.float32)[:, None, None]
        paint = np.clip(np.array(self.colour, np.float32)[None, None, :] * ramp + 6 * (ramp - 1), 0, 255)
        alpha = (self.body.astype(np.float32) / 255.0)[:, :, None]
        self.image = (self.image * (1 - alpha) + paint * alpha).astype(np.uint8)
        self.mask = np.maximum(self.mask, self.body)

    def wheel(self, cx: float, cy: float, r: float) -> None:
        c, rad = (round(cx * self.L), round(cy * self.L)), max(3, round(r * self.L))
        cv2.circle(self.image, c, rad, TYRE, -1, cv2.LINE_AA)
        cv2.circle(self.mask, c, rad, 255, -1, cv2.LINE_AA)
        cv2.circle(self.image, c, max(2, round(rad * 0.56)), HUB, -1, cv2.LINE_AA)
        cv2.circle(self.image, c, max(1, round(rad * 0.18)), TRIM, -1, cv2.LINE_AA)

    def arch(self, cx: float, cy: float, r: float) -> None:
        c, rad = (round(cx * self.L), round(cy * self.L)), round(r * self.L)
        cv2.ellipse(self.image, c, (rad, rad), 0, 180, 360, (20, 20, 20), -1, cv2.LINE_AA)

    def sprite(self, plate_x: float, plate_y: float, plate_w: int) -> Sprite:
        return Sprite(self.image, self.mask, (round(plate_x * self.L), round(plate_y * self.L), plate_w))


def car(length: int, colour: tuple[int, int, int], plate_w: int, rng: random.Random) -> Sprite:
    c = _Canvas(length, 0.37, colour, rng)
    c.paint_body([(0.01, 0.31), (0.0, 0.2), (0.01, 0.11), (0.30, 0.11), (0.40, 0.005), (0.66, 0.005), (0.80, 0.12),
                  (0.97, 0.14), (1.0, 0.2), (0.99, 0.31)])
    c.shade_body()
    c.fill([(0.33, 0.11), (0.415, 0.025), (0.52, 0.025), (0.52, 0.11)], GLASS)
    c.fill([(0.545, 0.11), (0.545, 0.025), (0.65, 0.025), (0.76, 0.11)], GLASS)
    c.fill([(0.0, 0.265), (0.2, 0.265), (0.2, 0.30), (0.01, 0.30)], TRIM)  # bumpers
    c.fill([(0.8, 0.265), (0.995, 0.265), (0.99, 0.30), (0.8, 0.30)], TRIM)
    c.fill([(0.955, 0.15), (0.995, 0.155), (0.998, 0.185), (0.96, 0.185)], (200, 235, 245))  # headlight
    c.fill([(0.002, 0.12), (0.02, 0.12), (0.02, 0.16), (0.002, 0.16)], (30, 30, 210))  # tail light
    for x in (0.2, 0.8):
        c.arch(x, 0.29, 0.105)
        c.wheel(x, 0.285, 0.085)
    return c.sprite(0.035, 0.115, plate_w)


def truck(length: int, colour: tuple[int, int, int], plate_w: int, rng: random.Random) -> Sprite:
    c = _Canvas(length, 0.43, colour, rng)
    c.fill([(0.02, 0.33), (0.98, 0.33), (0.98, 0.365), (0.02, 0.365)], TRIM)  # chassis
    c.paint_body([(0.0, 0.0), (0.755, 0.0), (0.755, 0.335), (0.0, 0.335)],  # box
                 [(0.77, 0.1), (0.93, 0.1), (0.995, 0.19), (1.0, 0.345), (0.77, 0.345)])  # cab
    c.shade_body()
    c.fill([(0.795, 0.125), (0.92, 0.125), (0.97, 0.2), (0.795, 0.2)], GLASS)
    c.fill([(0.0, 0.01), (0.755, 0.01), (0.755, 0.02), (0.0, 0.02)], TRIM)  # roof rail
    c.fill([(0.975, 0.25), (0.999, 0.25), (0.999, 0.28), (0.975, 0.28)], (200, 235, 245))
    for x in (0.1, 0.2, 0.87):
        c.wheel(x, 0.375, 0.055)
    return c.sprite(0.02, 0.255, plate_w)


def motorcycle(length: int, colour: tuple[int, int, int], plate_w: int, rng: random.Random) -> Sprite:
    c = _Canvas(length, 0.98, colour, rng)
    jacket = rng.choice([(44, 42, 40), (34, 34, 38), (28, 28, 30)])  # dark leathers
    helmet = rng.choice([(236, 236, 236), (40, 40, 40), c.colour])
    c.wheel(0.2, 0.78, 0.19)
    c.wheel(0.82, 0.78, 0.19)
    c.fill([(0.3, 0.72), (0.62, 0.72), (0.7, 0.58), (0.34, 0.58)], (36, 36, 38))  # engine
    c.fill([(0.22, 0.76), (0.26, 0.76), (0.44, 0.62), (0.40, 0.60)], HUB)  # swing arm
    c.fill([(0.8, 0.78), (0.84, 0.78), (0.72, 0.4), (0.68, 0.41)], HUB)  # fork
    c.paint_body([(0.08, 0.55), (0.3, 0.5), (0.45, 0.46), (0.58, 0.42), (0.72, 0.44), (0.7, 0.58), (0.3, 0.6),
                  (0.1, 0.6)],  # tail, tank
                 [(0.66, 0.44), (0.74, 0.3), (0.82, 0.36), (0.78, 0.56)],  # fairing
                 [(0.64, 0.59), (0.98, 0.59), (0.94, 0.63), (0.68, 0.63)])  # front mudguard
    c.shade_body()
    c.fill([(0.2, 0.5), (0.45, 0.46), (0.45, 0.5), (0.2, 0.54)], (30, 30, 30))  # seat
    c.fill([(0.28, 0.5), (0.46, 0.5), (0.56, 0.64), (0.5, 0.7), (0.36, 0.56)], jacket)  # leg
    c.fill([(0.28, 0.5), (0.5, 0.48), (0.58, 0.2), (0.42, 0.14)], jacket)  # torso
    c.fill([(0.5, 0.22), (0.56, 0.2), (0.74, 0.33), (0.7, 0.36)], jacket)  # arm
    cv2.circle(c.image, (round(0.5 * c.L), round(0.1 * c.L)), round(0.1 * c.L), helmet, -1, cv2.LINE_AA)
    cv2.circle(c.mask, (round(0.5 * c.L), round(0.1 * c.L)), round(0.1 * c.L), 255, -1, cv2.LINE_AA)
    return c.sprite(0.0, 0.47, plate_w)


DRAW = {"car": car, "truck": truck, "motorcycle": motorcycle}
