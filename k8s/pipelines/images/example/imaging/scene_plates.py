"""Licence plates for the generator, modelled on the Russian plates OpenCV's plate cascade was trained on:
520x112 mm (aspect 4.64), white, a thin black border, dark characters "A123BC" then a divider and a region code.
Letters are the twelve Cyrillic ones that look Latin, so cv2.putText can draw them."""

from __future__ import annotations

import random

import cv2
import numpy as np

ASPECT = 520 / 112
LETTERS = "ABEKMHOPCTYX"
INK = (24, 22, 22)


def plate_text(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(3))
    main = rng.choice(LETTERS) + digits + "".join(rng.choice(LETTERS) for _ in range(2))
    region = "".join(rng.choice("0123456789") for _ in range(rng.choice((2, 2, 3))))
    return main, region


def render_plate(width: int, rng: random.Random) -> tuple[np.ndarray, str]:
    """A BGR plate `width` px wide and its text ("A123BC 77"). Drawn large then shrunk, like a camera would see
    it: thin strokes survive as grey instead of vanishing."""
    main, region = plate_text(rng)
    big_w = 520
    big_h = int(round(big_w / ASPECT))
    paper = 236 + rng.randint(0, 14)
    img = np.full((big_h, big_w, 3), (paper, paper, paper - rng.randint(0, 8)), np.uint8)
    font = cv2.FONT_HERSHEY_DUPLEX
    # main characters in the left 390 mm, stretched to fill it as plate fonts do
    (tw, th), _ = cv2.getTextSize(main, font, 3.0, 9)
    strip = np.full((th + 24, tw + 8, 3), 255, np.uint8)
    cv2.putText(strip, main, (4, th + 12), font, 3.0, (0, 0, 0), 9, cv2.LINE_AA)
    glyphs = cv2.resize(strip, (362, int(big_h * 0.78)), interpolation=cv2.INTER_AREA)
    y0 = (big_h - glyphs.shape[0]) // 2 + 2
    roi = img[y0:y0 + glyphs.shape[0], 14:14 + glyphs.shape[1]]
    np.copyto(roi, np.minimum(roi, np.maximum(glyphs, INK[0]).astype(np.uint8)))
    cv2.line(img, (392, 4), (392, big_h - 5), INK, 4)
    (rw, rh), _ = cv2.getTextSize(region, font, 1.7, 5)
    rx = 392 + (big_w - 392 - rw) // 2
    cv2.putText(img, region, (rx, 12 + rh), font, 1.7, INK, 5, cv2.LINE_AA)
    cv2.putText(img, "RUS", (412, big_h - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.9, INK, 2, cv2.LINE_AA)
    cv2.rectangle(img, (2, 2), (big_w - 3, big_h - 3), INK, 5)
    height = max(8, int(round(width / ASPECT)))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA), f"{main} {region}"
