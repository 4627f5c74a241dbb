"""The thumbnailer example end to end on real videos: generate.py renders them with ffmpeg, thumbnail.py runs as
the worker contract says (a subprocess with WORK_ITEM_FILE / WORK_OUTPUT_DIR) and must produce a real,
correctly sized, non-blank PNG, or fail with ffmpeg's own reason."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thumbnailer"
WIDTH = 160
COUNT, CORRUPT = 6, 3  # the first lap of generate.SPECS: every codec, the odd size and the short clip


def load_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("thumbnailer_generate", EXAMPLE / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while it executes
    spec.loader.exec_module(module)
    return module


generate = load_generate()
PLAN = generate.plan(COUNT)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("videos")
    made = generate.generate(outdir, COUNT, CORRUPT)
    assert len(made) == COUNT + CORRUPT and all(p.exists() for p in made)
    return outdir


def run_worker(tmp_path: Path, item: dict[str, object], width: int = WIDTH) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    item_file = tmp_path / "item.json"
    item_file.write_text(json.dumps(item))
    return run_script(item_file, tmp_path / "out", THUMB_WIDTH=str(width), THUMB_TIMEOUT_S="30")


def run_script(item_file: Path, out_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("THUMB_", "WORK_"))}  # the caller's own
    env = {**base, "WORK_ITEM_FILE": str(item_file), "WORK_OUTPUT_DIR": str(out_dir), **settings}
    return subprocess.run([sys.executable, str(EXAMPLE / "thumbnail.py")], env=env, capture_output=True, text=True,
                          timeout=90)


def item_for(path: Path) -> dict[str, object]:
    """The shape services/core/command.py writes: the source item's fields under `data`."""
    return {"id": path.name, "name": path.name, "data": {"uri": path.as_uri(), "size": path.stat().st_size,
                                                         "content_type": "video/mp4"}}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def gray_pixels(png: Path) -> bytes:
    """Decode the PNG back with ffmpeg: the pixels, not just the header, must be a picture."""
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(png), "-f", "rawvideo", "-pix_fmt", "gray",
            "-"]
    return subprocess.run(argv, capture_output=True, check=True, timeout=30).stdout


def variance(pixels: bytes) -> float:
    mean = sum(pixels) / len(pixels)
    return sum((p - mean) ** 2 for p in pixels) / len(pixels)


@pytest.mark.parametrize("name,spec", PLAN, ids=[name for name, _ in PLAN])
def test_thumbnails_every_generated_video(videos: Path, tmp_path: Path, name: str, spec: Any) -> None:
    done = run_worker(tmp_path, item_for(videos / name))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    png = Path(result["thumbnail"])
    assert png == (tmp_path / "out" / "thumbnail.png").resolve() and png.is_file()
    width, height = png_size(png)
    assert (result["width"], result["height"]) == (width, height)
    assert width == WIDTH and height % 2 == 0
    assert abs(height - WIDTH * spec.height / spec.width) <= 2  # aspect kept (height rounded to even)
    assert result["source"] == name
    assert result["duration_s"] == pytest.approx(spec.seconds, abs=0.1)
    if spec.seconds >= 1:  # a frame from the window a third of the way in, not the opening frame
        assert spec.seconds / 3 - 0.1 <= result["frame_at_s"] <= spec.seconds
    else:
        assert result["frame_at_s"] == 0
    pixels = gray_pixels(png)
    assert len(pixels) == width * height
    assert variance(pixels) > 10  # a picture, not a blank frame


def test_thumbnails_differ_between_videos(videos: Path, tmp_path: Path) -> None:
    pixels = []
    for i, (name, _) in enumerate(PLAN[:2]):
        done = run_worker(tmp_path / str(i), item_for(videos / name))
        assert done.returncode == 0, done.stderr
        pixels.append(gray_pixels(Path(json.loads(done.stdout)["thumbnail"])))
    assert pixels[0] != pixels[1]


def test_accepts_a_top_level_uri_and_the_default_width(videos: Path, tmp_path: Path) -> None:
    name = PLAN[0][0]
    item_file = tmp_path / "item.json"
    item_file.write_text(json.dumps({"id": name, "uri": (videos / name).as_uri()}))
    done = run_script(item_file, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "out" / "thumbnail.png") == (320, 180)


@pytest.mark.parametrize("index", range(CORRUPT))
def test_corrupt_video_fails_with_ffmpegs_reason(videos: Path, tmp_path: Path, index: int) -> None:
    path = next(videos.glob(f"corrupt-{index:03d}.*"))
    done = run_worker(tmp_path, item_for(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert path.name in done.stderr
    assert "Invalid data found when processing input" in done.stderr
    if index == 0:  # the mp4 cut off after its header
        assert "moov atom not found" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one concise message
    assert not (tmp_path / "out" / "thumbnail.png").exists()


@pytest.mark.parametrize("uri", ["https://example.com/v.mp4", "s3://bucket/v.mp4", "/no/scheme.mp4",
                                 "file://otherhost/v.mp4"])
def test_non_file_uri_is_refused_with_exit_2(tmp_path: Path, uri: str) -> None:
    done = run_worker(tmp_path, {"id": "v.mp4", "data": {"uri": uri}})
    assert done.returncode == 2
    assert "thumbnail:" in done.stderr and done.stdout == ""


def test_file_names_that_need_escaping(videos: Path, tmp_path: Path) -> None:
    odd = tmp_path / "my clip %41 #1.webm"  # as_uri escapes it; the worker must undo that exactly once
    shutil.copy(videos / PLAN[5][0], odd)
    done = run_worker(tmp_path / "w", item_for(odd))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == odd.name


def test_ffmpeg_calls_time_out(videos: Path, tmp_path: Path) -> None:
    stuck = tmp_path / "stuck-ffmpeg"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n")
    stuck.chmod(0o755)
    item_file = tmp_path / "item.json"
    item_file.write_text(json.dumps(item_for(videos / PLAN[0][0])))
    # imageio-ffmpeg honours IMAGEIO_FFMPEG_EXE: swap in an ffmpeg that never answers
    done = run_script(item_file, tmp_path / "out", THUMB_TIMEOUT_S="1", IMAGEIO_FFMPEG_EXE=str(stuck))
    assert done.returncode == 1 and "timed out after 1s" in done.stderr


def test_missing_file_fails(tmp_path: Path) -> None:
    done = run_worker(tmp_path, {"id": "gone.mp4", "data": {"uri": (tmp_path / "gone.mp4").as_uri()}})
    assert done.returncode == 1
    assert "no such file" in done.stderr


def test_bad_width_is_a_settings_error(videos: Path, tmp_path: Path) -> None:
    done = run_worker(tmp_path, item_for(videos / PLAN[0][0]), width=0)
    assert done.returncode == 2 and "THUMB_WIDTH" in done.stderr


def test_generate_names_are_deterministic() -> None:
    names = [name for name, _ in generate.plan(8)]
    assert names[0] == "video-000-h264-640x360.mp4"
    assert names == [name for name, _ in generate.plan(8)]
    assert len(set(names)) == 8
