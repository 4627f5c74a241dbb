"""Reading the image an item points at, and writing results next to where a worker is told to."""

from __future__ import annotations

import atexit
import hashlib
import os
from collections import OrderedDict, deque
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

# The decoded-frame handoff between processes on one host (opt-in: IMAGING_FRAME_DIR, e.g. /dev/shm/imaging):
# write_png also leaves the raw pixels there as <sha1 of (path, mtime, size)>.npy, and read() in another process
# (the recognition and face stages reading the plate-blurred copy) maps them instead of decoding the PNG again.
# Same pixels (the PNG is lossless), so the same results; a missing, pruned or unreadable frame means a decode.
# Each writing process keeps its newest FRAME_KEEP frames (2.7 MB each at 1280x720) and removes them at exit.
FRAME_DIR = Path(os.environ["IMAGING_FRAME_DIR"]) if os.environ.get("IMAGING_FRAME_DIR") else None
FRAME_KEEP = int(os.environ.get("IMAGING_FRAME_KEEP", "128"))
_WRITTEN: deque[Path] = deque()


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
    image = _frame(key)
    if image is None:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return _remember(key, image)


def write_png(image: np.ndarray, path: Path, share: bool = False) -> Path:
    """Lossless, so what was not blurred is bit-for-bit what was decoded. Written to a temporary name and renamed:
    a retried item overwrites, and a reader never sees half a file. `share`: other processes will read this file
    (see FRAME_DIR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image, PNG_PARAMS)
    if not ok:
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encoded.tobytes())
    tmp.replace(path)
    key = _key(path)
    _remember(key, image.copy())  # the next step of a chain reads what was just written
    if share:
        _leave_frame(key, image)
    return path


def _frame_path(key: tuple[str, int, int]) -> Path:
    assert FRAME_DIR is not None
    return FRAME_DIR / f"{hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()}.npy"


def _frame(key: tuple[str, int, int]) -> np.ndarray | None:
    """The frame another process left for this exact file version, mapped read-only; None when there is none."""
    if FRAME_DIR is None:
        return None
    try:
        frame = np.load(_frame_path(key), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        return None
    return np.asarray(frame)


def _leave_frame(key: tuple[str, int, int], image: np.ndarray) -> None:
    global FRAME_DIR
    if FRAME_DIR is None or image.dtype != np.uint8 or image.ndim != 3:
        return
    target = _frame_path(key)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        FRAME_DIR.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:  # a file object: given a name, np.save would append ".npy"
            np.save(f, np.ascontiguousarray(image), allow_pickle=False)
        tmp.replace(target)
    except OSError:  # a full or missing tmpfs: stop handing frames over, the readers decode
        tmp.unlink(missing_ok=True)
        FRAME_DIR = None
        return
    if not _WRITTEN:
        atexit.register(_remove_frames)
    _WRITTEN.append(target)
    while len(_WRITTEN) > FRAME_KEEP:
        _WRITTEN.popleft().unlink(missing_ok=True)


def _remove_frames() -> None:
    while _WRITTEN:
        _WRITTEN.popleft().unlink(missing_ok=True)
