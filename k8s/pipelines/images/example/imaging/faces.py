"""Faces: OpenCV's Haar frontal-face cascade finds them; a small embedding and a nearest-neighbour search against
a gallery names them, or calls them "unknown" when even the nearest is too far.

The embedding is a HOG descriptor (skimage.feature.hog) of the face crop, grey, histogram-equalised, 64x64, and
L2-normalised, so distance is cosine distance. LBPH would need opencv-contrib, which the headless wheel lacks;
HOG keeps the spatial layout of brows, eyes, nose and mouth, which is what tells two frontal faces apart."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from skimage.feature import hog

from . import scene_photos as photos
from .boxes import Box
from .detectors import Detection, cascade, register

FACE_SIZE = 64
UNKNOWN = "unknown"
# Cosine distance. Measured: the gallery's own people, as billboards and portraits show them (rescaled, JPEG,
# noise), are within 0.11 of their entries; the 94 other LFW faces the cascade finds are all >= 0.19 away.
MAX_DISTANCE = 0.15
WORK_WIDTH = 800  # faces that matter here are >= 50 px; detecting on a smaller copy halves the cascade's time


class FaceDetector:
    def __init__(self, min_size: int = 28, neighbours: int = 5) -> None:
        self.cascade = cascade("haarcascade_frontalface_default.xml")
        self.min_size, self.neighbours = min_size, neighbours

    def detect(self, image: np.ndarray) -> list[Detection]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        f = min(1.0, WORK_WIDTH / gray.shape[1])
        if f < 1.0:
            gray = cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        faces = self.cascade.detectMultiScale(gray, 1.2, self.neighbours, minSize=(self.min_size, self.min_size))
        return [Detection(Box.of(r).scale(1 / f), "face", 1.0) for r in faces]


def embed(image: np.ndarray, box: Box) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    b = box.clip(gray.shape[1], gray.shape[0])
    face = cv2.equalizeHist(cv2.resize(gray[b.y:b.y + b.h, b.x:b.x + b.w], (FACE_SIZE, FACE_SIZE),
                                       interpolation=cv2.INTER_AREA))
    vector = hog(face, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True)
    return (vector / (np.linalg.norm(vector) + 1e-9)).astype(np.float32)


@dataclass
class Gallery:
    names: list[str]
    vectors: np.ndarray  # one row per enrolled picture (several per name)

    def nearest(self, vector: np.ndarray) -> tuple[str, float]:
        distances = 1.0 - self.vectors @ vector
        i = int(np.argmin(distances))
        return self.names[i], float(distances[i])

    def tag(self, vector: np.ndarray, max_distance: float = MAX_DISTANCE) -> tuple[str, float]:
        name, distance = self.nearest(vector)
        return (name if distance <= max_distance else UNKNOWN), distance


# How the cascade's box wanders around a face from one picture to the next (its scale steps are 20% apart):
# the gallery holds each face framed a few ways, so a probe framed any of them is still near.
JITTER = [(dx, dy, s) for s in (0.92, 1.0, 1.08) for dx, dy in ((0, 0), (-0.05, 0), (0.05, 0), (0, -0.05), (0, 0.05))]


def _enrol(name: str, picture: np.ndarray, detector: FaceDetector) -> list[tuple[str, np.ndarray]]:
    """Embed the largest face the detector finds (so gallery crops frame faces as probes do), jittered."""
    found = detector.detect(picture)
    if not found:
        raise ValueError(f"gallery picture for {name!r}: no face found")
    b = max(found, key=lambda d: d.box.area).box
    entries = []
    for dx, dy, s in JITTER:
        w, h = b.w * s, b.h * s
        box = Box.of((b.x + b.w / 2 - w / 2 + dx * b.w, b.y + b.h / 2 - h / 2 + dy * b.h, w, h))
        entries.append((name, embed(picture, box)))
    return entries


@cache
def default_gallery() -> Gallery:
    """The astronaut and three people from scikit-image's LFW sample: everyone else is a stranger."""
    detector = FaceDetector()
    entries = _enrol("astronaut", photos.astronaut(), detector)
    for index in photos.GALLERY_LFW:
        entries += _enrol(f"lfw-{index:02d}", photos.lfw_face(index, 100)[0], detector)
    return Gallery([n for n, _ in entries], np.stack([v for _, v in entries]))


register("faces", FaceDetector)
