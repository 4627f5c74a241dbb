"""Pipeline plugin for the image example: `plugins: [examples/images/plugin.py]` registers plate-detect,
plate-blur, vehicle-detect, vehicle-classify, face-detect, face-tag and face-blur."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import imaging.workers  # noqa: E402,F401
