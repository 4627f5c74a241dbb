"""A vehicle's body colour, named from the palette: vote pixel by pixel in the rows where a vehicle of that class
shows paint, skipping pixels that look like the road behind it.

Saturated pixels vote for the palette hue nearest theirs; if enough of the paint band is saturated the vehicle
has that colour, because tyres, glass, trim, riders and plates are all greyish. Otherwise it is achromatic and the
band's pixels vote by brightness for the nearest of black, silver and white."""

from __future__ import annotations

import cv2
import numpy as np

from .boxes import Box
from .palette import ACHROMATIC, CHROMATIC, PALETTE

# Rows (fractions of the box height) where paint shows: under a car's windows and above its wheel arches, a
# truck's box and cab, a motorcycle's tank and tail.
PAINT_BAND = {"car": (0.32, 0.62), "truck": (0.08, 0.7), "motorcycle": (0.3, 0.7)}
MIN_SATURATION, MIN_VALUE = 90, 60
CHROMATIC_SHARE = 0.25
BLACK_MAJORITY = 0.6


def _hsv(bgr: tuple[int, int, int]) -> np.ndarray:
    return cv2.cvtColor(np.uint8([[bgr]]), cv2.COLOR_BGR2HSV)[0, 0].astype(np.int32)


HUES = {name: int(_hsv(PALETTE[name])[0]) for name in CHROMATIC}
VALUES = {name: int(_hsv(PALETTE[name])[2]) for name in ACHROMATIC}


def _nearest_hue(hue: np.ndarray) -> np.ndarray:
    """Index into CHROMATIC of the nearest palette hue (OpenCV hue is 0..179 and wraps)."""
    centres = np.array([HUES[n] for n in CHROMATIC])[None, :]
    d = np.abs(hue[:, None] - centres)
    return np.argmin(np.minimum(d, 180 - d), axis=1)


def body_colour(image: np.ndarray, foreground: np.ndarray, box: Box, cls: str) -> tuple[str, float]:
    """(palette name, share of the band's pixels that agree). `foreground` is the road model's mask for
    `image` (255 = not road, 0 also where earlier steps blurred a plate), so neither asphalt showing between a
    motorcycle's parts nor a grey smudge of plate votes."""
    top, bottom = PAINT_BAND.get(cls, (0.3, 0.7))
    y0, y1 = box.y + int(top * box.h), box.y + max(int(bottom * box.h), int(top * box.h) + 1)
    x0, x1 = box.x + int(0.05 * box.w), box.x + max(int(0.95 * box.w), int(0.05 * box.w) + 1)
    hsv = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    keep = foreground[y0:y1, x0:x1].reshape(-1) > 0
    hsv = hsv[keep] if keep.sum() >= 10 else hsv
    if hsv.size == 0:
        return "unknown", 0.0
    chroma = (hsv[:, 1] >= MIN_SATURATION) & (hsv[:, 2] >= MIN_VALUE)
    if chroma.mean() >= CHROMATIC_SHARE:
        votes = np.bincount(_nearest_hue(hsv[chroma, 0]), minlength=len(CHROMATIC))
        return CHROMATIC[int(votes.argmax())], float(votes.max()) / len(hsv)
    levels = np.array([VALUES[n] for n in ACHROMATIC])
    votes = np.bincount(np.argmin(np.abs(hsv[~chroma, 2][:, None] - levels[None, :]), axis=1),
                        minlength=len(ACHROMATIC)) / max(1, int((~chroma).sum()))
    black = ACHROMATIC.index("black")
    if cls == "motorcycle" and votes[black] < BLACK_MAJORITY:
        votes[black] = 0.0  # every motorcycle has a dark seat, tyres and rider: black must clearly dominate
    return ACHROMATIC[int(votes.argmax())], float(votes.max())
