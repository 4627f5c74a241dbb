"""What the end-to-end tests share: start `batchmesh run` in its own data dir, find a role process it started,
and SIGKILL a worker while it holds items it has not committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]


def start_run(tmp: Path, pipeline: Path, source: Path, env: dict[str, str] | None = None,
              timeout_s: int = 240) -> subprocess.Popen[str]:
    run_env = {**os.environ, **(env or {}), "BATCHMESH_DATA_DIR": str(tmp / "st")}
    run_env.pop("REDIS_URL", None)  # its own embedded Redis, in its own data dir
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(pipeline), "--input", str(source),
                             "--out", str(tmp / "out"), "--quiet", "--timeout", str(timeout_s)],
                            cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_pid(run_pid: int, stage: str) -> int | None:
    """The pid of the `batchmesh worker --stage <stage>` process our run started (a child of it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == run_pid and b"worker" in cmdline and stage.encode() in cmdline:
            return int(proc.name)
    return None


def kill_worker_mid_batch(run: subprocess.Popen[str], tmp: Path, pipeline: str, stage: str, stream: str) -> bool:
    """SIGKILL the stage's worker while it holds items it has not committed. True if that moment was caught."""
    deadline = time.monotonic() + 60
    marker = tmp / "st" / "redis" / "redis.url"
    while time.monotonic() < deadline and run.poll() is None:
        url = marker.read_text().strip() if marker.exists() else ""
        if url:
            client = redis.Redis.from_url(url)
            try:
                pending = client.xpending(f"bm:{{{pipeline}}}:s:{stream}", stage)["pending"]
            except redis.ResponseError:
                pending = 0
            pid = worker_pid(run.pid, stage)
            if pending and pid:
                os.kill(pid, signal.SIGKILL)
                return True
        time.sleep(0.005)
    return False
