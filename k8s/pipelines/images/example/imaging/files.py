"""Reading the image an item points at, and writing results next to where a worker is told to."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import cv2
import numpy as np

# Where a step finds its image in `data`: a blurred copy beats the original (originals are deleted after the
# join, and recognition must never see unblurred plates), a source item only has its uri.
IMAGE_KEYS = ("blurred", "image")


def image_path(data: dict[str, Any]) -> Path:
    for key in IMAGE_KEYS:
        if isinstance(data.get(key), str) and data[key]:
            return Path(data[key])
    uri = data.get("uri")
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"item data has no image: expected one of {', '.join(IMAGE_KEYS)} or a file:// uri")
    parts = urlparse(uri)
    if parts.scheme != "file":
        raise ValueError(f"only file:// uris are read, not {parts.scheme or 'a bare path'!r}: {uri}")
    return Path(url2pathname(unquote(parts.path)))


# Stored, not deflated, and unfiltered by default: the next stages decode every blurred copy again. A 1280x720
# frame then encodes in ~3 ms and decodes in ~2.6 ms, against ~22 / ~9 ms with libpng's adaptive row filters
# (which buy nothing when nothing is compressed) and ~27 / ~11 ms at level 1 (files ~2.7x smaller).
# IMAGING_PNG_LEVEL=1..9 trades speed back for size.
PNG_LEVEL = int(os.environ.get("IMAGING_PNG_LEVEL", "0"))
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL] + \
    ([cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE] if PNG_LEVEL == 0 else [])

_CACHE: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
CACHE_SIZE = 4


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _remember(key: tuple[str, int, int], image: np.ndarray) -> np.ndarray:
    image.flags.writeable = False  # shared between steps: whoever wants to draw on it must copy
    _CACHE[key] = image
    _CACHE.move_to_end(key)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return image


def read(path: Path) -> np.ndarray:
    """The decoded image, read-only. Steps of a chain run in one process and mostly read the same file: a small
    cache keyed by (path, mtime, size) decodes it once. A file replaced on disk has a new key."""
    try:
        key = _key(path)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return _remember(key, image)


def write_png(image: np.ndarray, path: Path) -> Path:
    """Lossless, so what was not blurred is bit-for-bit what was decoded. Written to a temporary name and renamed:
    a retried item overwrites, and a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image, PNG_PARAMS)
    if not ok:
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encoded.tobytes())
    tmp.replace(path)
    _remember(_key(path), image.copy())  # the next step of a chain reads what was just written
    return path
