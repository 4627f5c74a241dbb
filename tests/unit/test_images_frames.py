"""The image example's decoded-frame handoff (IMAGING_FRAME_DIR): a PNG written with share=True is read by another
process from the frame it left, pixel for pixel what the PNG decodes to; a file replaced since (new mtime/size)
is decoded again, never served a stale frame; each writer keeps its newest FRAME_KEEP frames and removes them at
exit. Real processes, a real tmp directory standing in for /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "images"

# Writes three frames with FRAME_KEEP=2, then reports which frame files exist while it runs (atexit removes them).
WRITER = """
import sys, numpy as np
from pathlib import Path
from imaging import files
rng = np.random.default_rng(1)
for i in range(3):
    files.write_png(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), Path(sys.argv[1]) / f"{i}.png", share=True)
print(len(list(files.FRAME_DIR.glob("*.npy"))))
"""
# Reads each PNG in another process: 'frame' when it came from the handoff (and equals the PNG's decode), else 'png'.
READER = """
import sys, cv2, numpy as np
from pathlib import Path
from imaging import files
for p in sorted(Path(sys.argv[1]).glob("*.png")):
    frame = files._frame(files._key(p))
    image = files.read(p)
    assert np.array_equal(image, cv2.imread(str(p))), p
    print(p.name, "frame" if frame is not None else "png")
"""


def python(code: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=EXAMPLE, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_shared_png_is_read_from_its_frame_in_another_process(tmp_path: Path) -> None:
    frames, pngs = tmp_path / "frames", tmp_path / "png"
    env = {**os.environ, "IMAGING_FRAME_DIR": str(frames), "IMAGING_FRAME_KEEP": "2",
           "PYTHONPATH": str(EXAMPLE)}
    # the writer stays up (waiting on stdin) while the readers run: its frames are removed when it exits
    keeper = subprocess.Popen([sys.executable, "-c", WRITER + "\nimport sys; sys.stdout.flush(); sys.stdin.read()\n",
                               str(pngs)], cwd=EXAMPLE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert keeper.stdout is not None and keeper.stdout.readline().strip() == "2"  # the oldest frame pruned
        seen = dict(line.split() for line in python(READER, str(pngs), env=env).splitlines())
        assert seen == {"0.png": "png", "1.png": "frame", "2.png": "frame"}
        replaced = pngs / "2.png"  # a new version of a file: its old frame no longer applies
        cv2.imwrite(str(replaced), np.zeros((48, 64, 3), np.uint8))
        seen = dict(line.split() for line in python(READER, str(pngs), env=env).splitlines())
        assert seen == {"0.png": "png", "1.png": "frame", "2.png": "png"}
    finally:
        keeper.communicate("", timeout=60)
    assert keeper.returncode == 0
    assert not list(frames.glob("*")), "the writer removes its frames at exit"


def test_without_the_setting_nothing_is_left(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMAGING_FRAME_DIR"} | {"PYTHONPATH": str(EXAMPLE)}
    code = WRITER.replace('print(len(list(files.FRAME_DIR.glob("*.npy"))))', "print(files.FRAME_DIR)")
    assert python(code, str(tmp_path / "png"), env=env).strip() == "None"
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["0.png", "1.png", "2.png"]
