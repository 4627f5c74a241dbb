"""Vehicle detection and classification from pixels, classically.

Detection is road-model subtraction: a roadside camera sees the road as horizontal bands (sky, trees, verge,
asphalt, markings), so each image row's median colour is its background as long as traffic leaves gaps (no row
more than half covered). Pixels far from their row's median in Lab are foreground; morphology removes thin lane
markings and guardrail posts and joins a vehicle's parts; each blob must stand on wheels (Hough circles touching
its bottom edge) to count as a vehicle — billboards and clouds do not.

Classification uses shape alone: the aspect ratio (a motorcycle is about as tall as long, with its rider) and the
top profile (a truck's box is flat across most of its length, a car's roof covers only its middle third). The
wheel count only sets the confidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .boxes import Box
from .colours import body_colour
from .detectors import Detection, register

WORK_WIDTH = 640  # detection runs on a copy this wide: blobs are large, and it is 4x cheaper than 1280
THRESHOLD = 20.0  # Lab distance from the row's background that counts as foreground


def foreground(image: np.ndarray) -> np.ndarray:
    """uint8 mask (255 = differs from its row's median colour), at the image's own size."""
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_BGR2LAB).astype(np.float32)
    background = np.median(lab, axis=1, keepdims=True)
    distance = np.sqrt((((lab - background) * (0.7, 1.0, 1.0)) ** 2).sum(axis=2))  # shading matters less than hue
    mask = np.where(distance > THRESHOLD, 255, 0).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((7, 1), np.uint8))  # lane markings: <= 5 px tall here
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 7)))


@dataclass
class Shape:
    box: Box  # in work-image pixels
    aspect: float
    fill: float  # blob area / box area
    flat_top: float  # share of columns whose top is within 15% of the box top
    wheels: list[tuple[float, float, float]]  # (x, y, r) in work-image pixels


def _dark_ring(gray: np.ndarray, x: float, y: float, r: float, ring: tuple[float, float], middle: float) -> bool:
    reach = int(np.ceil(r * ring[1])) + 1
    x0, y0 = max(0, int(x) - reach), max(0, int(y) - reach)
    patch = gray[y0:int(y) + reach + 1, x0:int(x) + reach + 1]
    yy, xx = np.ogrid[:patch.shape[0], :patch.shape[1]]
    d = np.sqrt((xx + x0 - x) ** 2 + (yy + y0 - y) ** 2) / max(r, 1.0)
    rubber, rim = patch[(d >= ring[0]) & (d <= ring[1])], patch[d <= middle]
    if rubber.size < 8 or rim.size < 3:
        return False
    return float(np.median(rubber)) < 95 and float(np.median(rim)) - float(np.median(rubber)) > 30


def tyre_radius(gray: np.ndarray, x: float, y: float, r: float) -> float | None:
    """A wheel is a dark ring (rubber) around a lighter middle (rim, hub). Hough finds either the tyre's outline
    or, when the tyre has no outline (a black car), the hub's; both tell a wheel from the many other circles in
    a car's curves. Returns the tyre's radius, or None when (x, y, r) is not a wheel."""
    if _dark_ring(gray, x, y, r, (0.7, 0.95), 0.4):
        return r
    if _dark_ring(gray, x, y, r, (1.3, 1.65), 0.7):
        return 1.75 * r
    return None


def find_wheels(gray: np.ndarray, box: Box) -> list[tuple[float, float, float]]:
    """Tyres standing at the bottom of the blob, one per position along it."""
    pad = max(4, box.h // 10)
    roi_box = Box(box.x - pad, box.y + box.h // 3, box.w + 2 * pad, box.h - box.h // 3 + pad)
    roi_box = roi_box.clip(gray.shape[1], gray.shape[0])
    roi = gray[roi_box.y:roi_box.y + roi_box.h, roi_box.x:roi_box.x + roi_box.w]
    r_min, r_max = max(3, int(0.05 * box.h)), max(6, int(0.3 * box.h))  # hubs are ~half a tyre
    circles = cv2.HoughCircles(cv2.medianBlur(roi, 3), cv2.HOUGH_GRADIENT, dp=1, minDist=max(4, r_min),
                               param1=90, param2=10, minRadius=r_min, maxRadius=r_max)
    if circles is None:
        return []
    wheels: list[tuple[float, float, float]] = []
    for cx, cy, r in sorted(circles[0][:40], key=lambda c: -c[2]):  # biggest first: the tyre, not its hub
        if cy < roi.shape[0] * 0.25:
            continue
        tyre = tyre_radius(roi, float(cx), float(cy), float(r))
        if tyre is None:
            continue
        r = tyre
        x, y = roi_box.x + float(cx), roi_box.y + float(cy)
        if y + r < box.y + 0.8 * box.h:  # wheels touch the ground, which is the blob's bottom edge
            continue
        if all(abs(x - wx) >= 0.9 * (r + wr) for wx, _, wr in wheels):
            wheels.append((x, y, float(r)))
    return sorted(wheels)


def shape_of(mask: np.ndarray, gray: np.ndarray, box: Box) -> Shape:
    blob = mask[box.y:box.y + box.h, box.x:box.x + box.w] > 0
    cols = blob.any(axis=0)
    tops = np.argmax(blob, axis=0)[cols]
    flat = float((tops <= 0.15 * box.h).mean()) if tops.size else 0.0
    return Shape(box, box.w / box.h, float(blob.mean()), flat, find_wheels(gray, box))


def classify(shape: Shape) -> tuple[str, float]:
    """car / truck / motorcycle from geometry, with a rough confidence."""
    if shape.aspect < 1.9:
        return "motorcycle", 0.9 if len(shape.wheels) == 2 else 0.6
    if shape.flat_top >= 0.55:
        return "truck", 0.9 if len(shape.wheels) >= 3 else 0.7
    return "car", 0.9 if len(shape.wheels) == 2 else 0.7


@dataclass
class Work:
    """An image prepared once for detection and description: downscaled copy, its grey and road-model mask."""

    scale: float  # work pixels per image pixel
    image: np.ndarray
    gray: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, image: np.ndarray) -> Work:
        """Prepared once per image: detection and description of a chain share it. Only read-only images (as
        files.read hands out) are remembered: they cannot change under the same identity."""
        global _LAST
        if _LAST is not None and _LAST[0] is image:
            return _LAST[1]
        f = min(1.0, WORK_WIDTH / image.shape[1])
        small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1.0 else image
        work = cls(f, small, cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), foreground(small))
        _LAST = (image, work) if not image.flags.writeable else None
        return work


_LAST: tuple[np.ndarray, Work] | None = None


class VehicleDetector:
    def __init__(self, min_area: float = 0.0015) -> None:
        self.min_area = min_area

    def shapes(self, work: Work) -> list[Shape]:
        mask = work.mask
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        found = []
        for x, y, w, h, area in stats[1:count]:
            if area < self.min_area * mask.size or min(w, h) < 12:
                continue
            if w > 0.7 * mask.shape[1] or h > 0.6 * mask.shape[0]:  # the whole sky, a photo's backdrop
                continue
            shape = shape_of(mask, work.gray, Box(int(x), int(y), int(w), int(h)))
            # A vehicle seen from the side stands on two wheels or more; one is enough for a blob that is not a
            # rectangle (a billboard is, and so is the odd patch of cloud): a real wheel can lack the contrast.
            if len(shape.wheels) >= 2 or (shape.wheels and shape.flat_top < 0.5):
                found.append(shape)
        return found

    def detect(self, image: np.ndarray) -> list[Detection]:
        work = Work.of(image)
        out = []
        for s in self.shapes(work):
            label, score = classify(s)
            box = s.box.scale(1 / work.scale).clip(image.shape[1], image.shape[0])
            out.append(Detection(box, label, score, {"wheels": len(s.wheels), "aspect": round(s.aspect, 2),
                                                     "flat_top": round(s.flat_top, 2)}))
        return out


def describe(image: np.ndarray, boxes: Sequence[Box], blurred: Sequence[Box] = ()) -> list[dict[str, object]]:
    """Class and body colour of the vehicle in each box (from any detector), measured on the pixels. `blurred`
    are regions an earlier step anonymised (plates): they keep their place in the shape but carry no paint."""
    work = Work.of(image)
    paint = work.mask
    if blurred:
        paint = work.mask.copy()
        for b in blurred:
            s = b.scale(work.scale)
            paint[max(0, s.y):s.y + s.h, max(0, s.x):s.x + s.w] = 0
    out = []
    for box in boxes:
        small = box.scale(work.scale).clip(work.mask.shape[1], work.mask.shape[0])
        if small.w < 2 or small.h < 2:
            continue
        cls, score = classify(shape_of(work.mask, work.gray, small))
        colour, share = body_colour(work.image, paint, small, cls)
        out.append({"class": cls, "colour": colour, "box": box.to_list(), "score": score,
                    "colour_share": round(share, 3)})
    return out


register("vehicles", VehicleDetector)
