"""Compose one image with its ground truth: a highway scene (drawn vehicles, maybe the real motorcycle pasted in,
maybe a roadside billboard showing a face), or one of the real photos on its own."""

from __future__ import annotations

import random
from typing import Any

import cv2
import numpy as np

from . import scene_photos as photos
from .boxes import Box
from .palette import PALETTE
from .scene_background import LANES, Layout, road
from .scene_plates import render_plate
from .scene_vehicles import DRAW, Sprite

LENGTH = {"car": 300, "truck": 520, "motorcycle": 180}  # px at scale 1 (a 1280-wide frame, nearest lane)
PLATE_WIDTH = 84  # px at scale 1; motorcycles carry a slightly smaller one
MAX_ROW_COVER = 0.5  # traffic with gaps: vehicles never fill more than half of any image row


def _truth_vehicle(cls: str, colour: str, box: Box, plate: tuple[str, Box] | None, source: str) -> dict[str, Any]:
    return {"class": cls, "colour": colour, "box": box.to_list(), "source": source,
            "plate": None if plate is None else {"text": plate[0], "box": plate[1].to_list()}}


def _with_plate(sprite: Sprite, rng: random.Random) -> tuple[Sprite, str, Box]:
    x, y, w = sprite.plate_slot
    plate, text = render_plate(w, rng)
    ph = plate.shape[0]
    sprite.image[y:y + ph, x:x + w] = plate
    sprite.mask[y:y + ph, x:x + w] = 255
    return sprite, text, Box(x, y, w, ph)


def _real_motorcycle(length: int, plate_w: int) -> Sprite:
    crop, mask, (sx, sy) = photos.motorcycle_cutout()
    f = length / crop.shape[1]
    size = (length, int(round(crop.shape[0] * f)))
    image = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    return Sprite(image, mask, (round(sx * f), round(sy * f), plate_w))


def _paste(img: np.ndarray, sprite: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    h, w = mask.shape
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    roi = img[y:y + h, x:x + w]
    roi[:] = (roi * (1 - alpha) + sprite * alpha).astype(np.uint8)


def _shadow(img: np.ndarray, x: int, ground: int, w: int) -> None:
    """A soft dark ellipse on the road under the vehicle (drawn in a local patch: cheaper than the whole frame)."""
    y0, y1 = max(0, ground - 12), min(img.shape[0], ground + 12)
    x0, x1 = max(0, x - 8), min(img.shape[1], x + w + 8)
    layer = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.ellipse(layer, (x + w // 2 - x0, ground - y0), (int(w * 0.5), max(2, int(w * 0.012))), 0, 0, 360, 0.35, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), 2)[:, :, None]
    img[y0:y1, x0:x1] = (img[y0:y1, x0:x1] * (1 - layer)).astype(np.uint8)


def _billboard(img: np.ndarray, rng: random.Random) -> tuple[Box, dict[str, Any]]:
    h, w = img.shape[:2]
    who = rng.choice(["astronaut", "astronaut", "gallery", "stranger"])
    if who == "astronaut":
        b = photos.ASTRONAUT_BUST
        picture = photos.astronaut()[b.y:b.y + b.h, b.x:b.x + b.w]
        face = Box(photos.ASTRONAUT_FACE.x - b.x, photos.ASTRONAUT_FACE.y - b.y, *photos.ASTRONAUT_FACE[2:])
        identity = "astronaut"
    else:
        index = rng.choice(photos.GALLERY_LFW if who == "gallery" else photos.STRANGER_LFW)
        picture, face = photos.lfw_face(index, 100)
        identity = f"lfw-{index:02d}" if who == "gallery" else "unknown"
    ph = int(rng.uniform(0.22, 0.27) * h)
    f = ph / picture.shape[0]
    pw = int(round(picture.shape[1] * f))
    x, y = rng.randint(20, w - pw - 20), int(0.02 * h)
    cv2.rectangle(img, (x - 6, y - 5), (x + pw + 5, y + ph + 5), (60, 60, 64), -1)
    for px in (x + pw // 4, x + 3 * pw // 4):
        cv2.rectangle(img, (px - 3, y + ph + 5), (px + 3, int(0.34 * h)), (80, 80, 84), -1)
    img[y:y + ph, x:x + pw] = cv2.resize(picture, (pw, ph), interpolation=cv2.INTER_AREA)
    face_box = Box.of((x + face.x * f, y + face.y * f, face.w * f, face.h * f))
    return Box(x - 6, y - 5, pw + 12, int(0.34 * h) - y + 5), {"identity": identity, "box": face_box.to_list()}


def highway(rng: random.Random, nprng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, dict]:
    img, layout = road(width, height, nprng)
    truth: dict[str, Any] = {"kind": "scene", "width": width, "height": height, "vehicles": [], "faces": []}
    taken: list[Box] = []
    if rng.random() < 0.45:
        area, face = _billboard(img, rng)
        taken.append(area)
        truth["faces"].append(face)
    cover = np.zeros(height, np.int32)
    real_moto = rng.random() < 0.35
    for n in range(rng.randint(2, 5)):
        placed = _place_vehicle(img, layout, taken, cover, real_moto and n == 0, rng)
        if placed is not None:
            truth["vehicles"].append(placed)
    return img, truth


def _place_vehicle(img: np.ndarray, layout: Layout, taken: list[Box], cover: np.ndarray, real_moto: bool,
                   rng: random.Random) -> dict[str, Any] | None:
    """Draw one vehicle and look for a free spot for it (no overlap, rows not over-full); None if there is none.
    Sprites are drawn for the lane tried first and reused for the other tries: a lane's scale differs by < 15%."""
    lane = rng.randrange(LANES)
    scale = layout.scale(lane)
    cls = "motorcycle" if real_moto else rng.choices(["car", "truck", "motorcycle"], [0.5, 0.25, 0.25])[0]
    colour = "red" if real_moto else rng.choice(list(PALETTE))
    plate_w = int(round(PLATE_WIDTH * scale * rng.uniform(0.95, 1.05) * (0.9 if cls == "motorcycle" else 1.0)))
    length = int(round(LENGTH[cls] * scale * rng.uniform(0.93, 1.07)))
    if real_moto:
        sprite = _real_motorcycle(int(length * 1.25), plate_w)
    else:
        sprite = DRAW[cls](length, PALETTE[colour], plate_w, rng)
    if rng.random() < 0.5:
        sprite = sprite.flipped()
    sprite, text, plate = _with_plate(sprite, rng)
    h, w = sprite.mask.shape
    margin = int(24 * scale)
    for _ in range(30):
        ground = layout.ground(lane) + rng.randint(-3, 3)
        x, y = rng.randint(4, layout.width - w - 4), ground - h
        box = Box(x, y, w, h)
        room = (cover[y:y + h] + w <= MAX_ROW_COVER * layout.width).all()
        if room and not any(box.overlaps(t, margin) for t in taken):
            break
        lane = rng.randrange(LANES)
    else:
        return None
    taken.append(box)
    cover[y:y + h] += w
    _shadow(img, x, ground, w)
    _paste(img, sprite.image, sprite.mask, x, y)
    ys, xs = np.nonzero(sprite.mask > 127)
    tight = Box(x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1)
    plate_box = Box(x + plate.x, y + plate.y, plate.w, plate.h)
    return _truth_vehicle(cls, colour, tight, (text, plate_box), "photo" if real_moto else "drawn")


def portrait(rng: random.Random) -> tuple[np.ndarray, dict]:
    """The astronaut's photo on its own, rescaled and re-exposed."""
    f = rng.uniform(0.8, 1.3)
    img = cv2.resize(photos.astronaut(), None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-15, 15))
    face = photos.ASTRONAUT_FACE.scale(f)
    h, w = img.shape[:2]
    return img, {"kind": "portrait", "width": w, "height": h, "vehicles": [],
                 "faces": [{"identity": "astronaut", "box": face.to_list()}]}


def motorcycle(rng: random.Random) -> tuple[np.ndarray, dict]:
    """The real motorcycle photo on its own (a garage, not a road: the road model does not apply)."""
    img = cv2.convertScaleAbs(photos.motorcycle_photo(), alpha=rng.uniform(0.9, 1.1), beta=rng.uniform(-10, 10))
    box = photos.MOTORCYCLE_BOX
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
        box = Box(img.shape[1] - box.x - box.w, box.y, box.w, box.h)
    h, w = img.shape[:2]
    vehicle = _truth_vehicle("motorcycle", "red", box, None, "photo")
    return img, {"kind": "photo", "width": w, "height": h, "vehicles": [vehicle], "faces": []}


def degrade(img: np.ndarray, nprng: np.random.Generator) -> np.ndarray:
    """Camera noise and a touch of defocus, so nothing is pixel-perfect."""
    sigma = float(nprng.uniform(0.5, 1.0))
    out = cv2.GaussianBlur(img, (0, 0), sigma).astype(np.float32)
    out += nprng.standard_normal(out.shape, dtype=np.float32) * np.float32(nprng.uniform(2, 5))
    return np.clip(out, 0, 255).astype(np.uint8)
