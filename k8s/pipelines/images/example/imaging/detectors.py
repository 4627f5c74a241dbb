"""One small plug-in interface for every detector: `detect(image_bgr) -> list[Detection]`, registered by name.

The built-in detectors are classical (Haar cascades, morphology, contours) and need nothing beyond OpenCV's
wheel. `OnnxDetector` runs a user-supplied YOLO-style ONNX model through `cv2.dnn`, so a learned detector can be
swapped in by name without touching the workers: `register("vehicles", lambda: OnnxDetector(path, labels))`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from .boxes import Box


@dataclass(frozen=True)
class Detection:
    box: Box
    label: str
    score: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"box": self.box.to_list(), "label": self.label, "score": round(float(self.score), 4), **self.extra}


@runtime_checkable
class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Detection]: ...


_FACTORIES: dict[str, Callable[[], Detector]] = {}


def register(name: str, factory: Callable[[], Detector]) -> None:
    """Make `get(name)` build detectors with `factory` (replacing a built-in is allowed: that is the point)."""
    _FACTORIES[name] = factory
    _instance.cache_clear()


def get(name: str) -> Detector:
    """The detector registered as `name`, built once per process (cascades and networks are slow to load)."""
    if name not in _FACTORIES:
        raise LookupError(f"unknown detector {name!r} (registered: {', '.join(sorted(_FACTORIES)) or 'none'})")
    return _instance(name)


@cache
def _instance(name: str) -> Detector:
    return _FACTORIES[name]()


def cascade(filename: str) -> cv2.CascadeClassifier:
    """A Haar cascade that ships inside the opencv-python wheel (cv2.data.haarcascades)."""
    path = Path(cv2.data.haarcascades) / filename
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise FileNotFoundError(f"OpenCV cascade {path} is missing or unreadable")
    return classifier


class OnnxDetector:
    """A YOLO-style ONNX detector (YOLOv5: rows of [cx, cy, w, h, objectness, class scores...]; YOLOv8: the same
    without objectness, transposed). `labels` names the model's classes in order; only those in `keep` (all when
    None) are reported. The model is the user's: nothing is downloaded."""

    def __init__(self, model: str | Path, labels: Sequence[str], *, size: int = 640, threshold: float = 0.35,
                 nms: float = 0.45, keep: Sequence[str] | None = None) -> None:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {str(path)!r} not found: OnnxDetector needs a model file you "
                                    "supply (e.g. a YOLO export); none ships with batchmesh")
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise ValueError(f"ONNX model {str(path)!r} could not be loaded by cv2.dnn: {exc}") from None
        self.labels, self.size, self.threshold, self.nms = list(labels), size, threshold, nms
        self.keep = set(keep) if keep is not None else None

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (self.size, self.size), swapRB=True, crop=False)
        self.net.setInput(blob)
        rows = np.squeeze(self.net.forward())
        if rows.ndim != 2:
            raise ValueError(f"unexpected ONNX output shape {rows.shape}")
        if rows.shape[0] < rows.shape[1] and rows.shape[0] in (4 + len(self.labels), 5 + len(self.labels)):
            rows = rows.T  # YOLOv8 exports are (channels, anchors)
        has_objectness = rows.shape[1] == 5 + len(self.labels)
        scores = rows[:, 5:] * rows[:, 4:5] if has_objectness else rows[:, 4:]
        classes, best = scores.argmax(axis=1), scores.max(axis=1)
        sx, sy = w / self.size, h / self.size
        boxes, confidences, picked = [], [], []
        for i in np.nonzero(best >= self.threshold)[0]:
            label = self.labels[int(classes[i])]
            if self.keep is not None and label not in self.keep:
                continue
            cx, cy, bw, bh = rows[i, :4]
            boxes.append([int((cx - bw / 2) * sx), int((cy - bh / 2) * sy), int(bw * sx), int(bh * sy)])
            confidences.append(float(best[i]))
            picked.append(label)
        kept = cv2.dnn.NMSBoxes(boxes, confidences, self.threshold, self.nms) if boxes else []
        return [Detection(Box(*boxes[i]).clip(w, h), picked[i], confidences[i]) for i in np.array(kept).flatten()]


def register_onnx_from_env() -> None:
    """IMAGING_ONNX_MODEL=model.onnx and IMAGING_ONNX_LABELS=person,bicycle,car,... (the model's classes, in order)
    register the model as detector "onnx"; IMAGING_ONNX_KEEP=car,truck,motorcycle keeps only those classes. Then
    IMAGING_VEHICLE_DETECTOR=onnx (or _PLATE_, _FACE_) makes the workers use it — no code to write."""
    model = os.environ.get("IMAGING_ONNX_MODEL")
    if not model:
        return
    labels = [x.strip() for x in os.environ.get("IMAGING_ONNX_LABELS", "").split(",") if x.strip()]
    if not labels:
        raise ValueError("IMAGING_ONNX_MODEL is set but IMAGING_ONNX_LABELS (the model's class names) is not")
    keep = [x.strip() for x in os.environ["IMAGING_ONNX_KEEP"].split(",")] if os.environ.get("IMAGING_ONNX_KEEP") \
        else None
    register("onnx", lambda: OnnxDetector(model, labels, keep=keep))
