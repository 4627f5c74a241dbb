"""`batchmesh run` end to end on the thumbnailer: every role its own process, the embedded Redis, real ffmpeg.
The corrupt video is dead-lettered with ffmpeg's reason, the rest finish, a second run does no work, new files
are picked up, and `dlq replay` puts the dead item back."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "thumbnailer" / "pipeline.yaml"


def _generator():  # the example's own generator, loaded by path (examples are not a package)
    spec = importlib.util.spec_from_file_location("thumb_generate", ROOT / "examples/thumbnailer/generate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def batchmesh(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "state")}
    env.pop("REDIS_URL", None)  # exercise the embedded Redis and its persistence between runs
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("thumbs")
    _generator().generate(tmp / "videos", count=4, corrupt=1)
    return tmp


def test_run_second_run_new_files_and_replay(workspace: Path) -> None:
    videos, out = workspace / "videos", workspace / "out"
    first = batchmesh(workspace, "run", str(PIPELINE), "--input", str(videos), "--out", str(out), "--quiet")
    assert first.returncode == 1, first.stderr  # 1: an item was dead-lettered
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["results"]) == 4
    for name, result in manifest["results"].items():
        png = Path(result["thumbnail"])
        assert png.is_file() and png.parent.name == name
        assert result["width"] == 320
    [dead] = manifest["dead_letters"]
    assert dead["item"].startswith("corrupt-") and "moov atom not found" in dead["reason"]
    assert dead["deliveries"] == 3

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("thumbnail.png")}
    second = batchmesh(workspace, "run", str(PIPELINE), "--input", str(videos), "--out", str(out), "--quiet")
    assert second.returncode == 0, second.stderr  # the dead item is an older dead letter: this run failed nothing
    assert "5 listed, 5 already done, 0 new" in second.stderr and "1 older dead letter(s) remain" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("thumbnail.png")} == stamps, "second run redid work"

    status = json.loads(batchmesh(workspace, "status", str(PIPELINE)).stdout)
    assert status["counts"]["done"] == 4 and status["counts"]["dead"] == 1
    assert status["stages"]["thumbnails"]["out"] == 4

    # A new file is work; the corrupt one is fixed (replaced by a real video) and replayed from the dead letters.
    extra = sorted(videos.glob("video-*"))[0]
    (videos / f"late-{extra.name}").write_bytes(extra.read_bytes())
    corrupt = next(videos.glob("corrupt-*"))
    corrupt.write_bytes(extra.read_bytes())
    listed = batchmesh(workspace, "dlq", "list", str(PIPELINE))
    assert json.loads(listed.stdout.splitlines()[0])["item"] == corrupt.name
    assert batchmesh(workspace, "dlq", "replay", str(PIPELINE)).returncode == 0
    third = batchmesh(workspace, "run", str(PIPELINE), "--input", str(videos), "--out", str(out), "--quiet")
    assert third.returncode == 0, third.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["results"]) == {p.name for p in videos.iterdir()}
    assert manifest["dead_letters"] == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "finished items were redone"
