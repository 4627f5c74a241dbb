"""Real photographs that ship inside scikit-image (no download): the astronaut (Eileen Collins) for a face, the
stereo pair's left motorcycle photo for a real vehicle, and LFW face crops for other known and unknown people.

Ground truth here is hand annotation, done once by looking at the pictures: the astronaut's face box and an
outline of the motorcycle, refined by GrabCut so it can be pasted into a road scene."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
import skimage.data

from .boxes import Box

ASTRONAUT_FACE = Box(175, 62, 97, 110)  # brow-to-chin, ear-to-ear, in skimage.data.astronaut() pixels
ASTRONAUT_BUST = Box(110, 0, 230, 250)  # face, hair and shoulders: what a billboard shows
MOTORCYCLE_BOX = Box(95, 86, 592, 372)  # skimage.data.stereo_motorcycle()[0], mirrors to tyres
_MOTO_OUTLINE = [(92, 200), (110, 190), (146, 158), (200, 158), (300, 180), (352, 190), (340, 150), (332, 120),
                 (430, 118), (455, 90), (540, 86), (550, 108), (562, 122), (583, 118), (587, 142), (565, 185),
                 (560, 232), (578, 262), (620, 272), (642, 300), (636, 318), (560, 330), (520, 360), (470, 372),
                 (400, 380), (330, 374), (300, 362), (250, 352), (200, 330), (130, 270), (105, 245), (92, 222)]
_MOTO_WHEELS = [((199, 319), 80), ((598, 372), 85)]
MOTO_PLATE_SLOT = (104, 222)  # under the tail light, where its plate would hang (x, y of the top-left corner)
# LFW crops (25x25, grey) of people the face gallery knows, and of people it must call "unknown"
GALLERY_LFW = (18, 31, 46)
STRANGER_LFW = (3, 9, 24, 37, 52, 66, 71, 83, 95)


def rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, ::-1])


@cache
def astronaut() -> np.ndarray:
    return rgb_to_bgr(skimage.data.astronaut())


@cache
def motorcycle_photo() -> np.ndarray:
    return rgb_to_bgr(skimage.data.stereo_motorcycle()[0])


@cache
def motorcycle_cutout() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(BGR crop, mask, plate slot in the crop) of the motorcycle alone: the hand outline marks probable
    foreground, the tyres certain foreground, the rest certain background; GrabCut (seeded, so deterministic)
    trims the garage away."""
    photo = motorcycle_photo()
    outline = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillPoly(outline, [np.array(_MOTO_OUTLINE, np.int32)], 255)
    labels = np.where(outline > 0, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    for centre, radius in _MOTO_WHEELS:
        cv2.circle(outline, centre, radius, 255, -1)
        cv2.circle(labels, centre, radius, cv2.GC_PR_FGD, -1)
        cv2.circle(labels, centre, radius - 6, cv2.GC_FGD, -1)
    cv2.setRNGSeed(0)
    cv2.grabCut(photo, labels, None, np.zeros((1, 65)), np.zeros((1, 65)), 3, cv2.GC_INIT_WITH_MASK)
    mask = np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    count, labelled, stats, _ = cv2.connectedComponentsWithStats(mask)
    mask = np.where(labelled == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), 255, 0).astype(np.uint8)
    x, y, w, h = cv2.boundingRect(mask)
    slot = (MOTO_PLATE_SLOT[0] - x, MOTO_PLATE_SLOT[1] - y)
    return photo[y:y + h, x:x + w].copy(), mask[y:y + h, x:x + w].copy(), slot


def lfw_face(index: int, size: int) -> tuple[np.ndarray, Box]:
    """LFW crop `index` scaled to `size` px, with a replicated border around it: the Haar cascade needs a little
    context beyond the tight crop. Returns the BGR picture and the face's box in it."""
    crop = (skimage.data.lfw_subset()[index] * 255).astype(np.uint8)
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    pad = size // 4
    picture = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR), Box(pad, pad, size, size)
