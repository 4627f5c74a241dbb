"""Generate the sample set: JPEG images plus `ground_truth.json` describing what is in each of them.

Deterministic per (seed, index): each image draws from its own seeded generators, so image 7 is the same whether
10 or 100 are made. Every 12th image (from index 5) is the astronaut portrait, every 12th from index 11 the
real motorcycle photo; the rest are highway scenes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import scene_compose as compose
from .palette import NAMES

SIZES = [(1280, 720), (1280, 720), (1152, 648)]
TRUTH_FILE = "ground_truth.json"


def kind_of(index: int) -> str:
    return {5: "portrait", 11: "photo"}.get(index % 12, "scene")


def make(index: int, seed: int) -> tuple[str, np.ndarray, dict[str, Any]]:
    rng = random.Random(f"{seed}:{index}")
    nprng = np.random.default_rng([seed, index])
    kind = kind_of(index)
    if kind == "portrait":
        img, truth = compose.portrait(rng)
    elif kind == "photo":
        img, truth = compose.motorcycle(rng)
    else:
        img, truth = compose.highway(rng, nprng, *rng.choice(SIZES))
    return f"{kind}-{index:03d}.jpg", compose.degrade(img, nprng), truth


def generate(outdir: Path, count: int = 24, seed: int = 7) -> dict[str, Any]:
    outdir.mkdir(parents=True, exist_ok=True)
    images: dict[str, Any] = {}
    for index in range(count):
        name, img, truth = make(index, seed)
        quality = 82 + (index * 7) % 11
        if not cv2.imwrite(str(outdir / name), img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {outdir / name}")
        images[name] = truth
    truth = {"seed": seed, "count": count, "palette": NAMES, "images": images}
    (outdir / TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
    return truth
