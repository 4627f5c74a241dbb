"""Reclaiming, with worker processes: a worker SIGKILLed mid-item has its entry reclaimed by another worker after
the visibility timeout and completed exactly once; a live worker's slow items are never reclaimed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from services.core import DONE, RUNNING, Keys, Progress, Settings, WorkItem, list_dead_letters
from services.core.results import results

REPO = Path(__file__).resolve().parents[2]

# Runs one worker like the CLI does: SIGTERM sets the stop event, the batch in hand is committed, exit 0.
LAUNCHER = """
import json, signal, sys, threading
from services.core.settings import Settings
from services.core.spec import Pipeline
from services.workers import run_worker
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
run_worker(Pipeline.model_validate(json.loads(sys.argv[1])), sys.argv[2], Settings(), stop)
"""

# The first run (no marker yet) records its pid and sleeps for a long time; later runs finish at once. Each
# completion appends the item id to completions.log and writes result.json.
SLOW = """
import json, os, pathlib, sys, time
state = pathlib.Path(sys.argv[1])
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
marker = state / "first.pid"
if not marker.exists():
    marker.write_text(str(os.getpid()))
    time.sleep(120)
with open(state / "completions.log", "a") as f:
    f.write(item["id"] + "\\n")
pathlib.Path(os.environ["WORK_OUTPUT_DIR"], "result.json").write_text(json.dumps({"pid": os.getpid()}))
"""


# Sleeps data.sleep seconds, then appends the item id to data.log.
NAP = """
import json, os, time
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
time.sleep(item["data"]["sleep"])
with open(item["data"]["log"], "a") as f:
    f.write(item["id"] + "\\n")
"""


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_worker(spec: dict[str, Any], stage: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": settings.redis_url or "",
           "BATCHMESH_PIPELINE": settings.pipeline, "BATCHMESH_OUT_DIR": str(settings.out_dir),
           "BATCHMESH_VISIBILITY_TIMEOUT_MS": str(settings.visibility_timeout_ms),
           "BATCHMESH_BLOCK_MS": str(settings.block_ms), "BATCHMESH_MAX_DELIVERIES": str(settings.max_deliveries)}
    with log.open("ab") as stderr:
        return subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(spec), stage], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)


def test_sigkill_mid_item_is_reclaimed_and_completed_once(
    client: redis.Redis, settings: Settings, pipeline_name: str, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"out_dir": tmp_path / "out"})
    assert settings.visibility_timeout_ms == 300
    script, state, log = tmp_path / "slow.py", tmp_path / "state", tmp_path / "workers.log"
    script.write_text(SLOW)
    state.mkdir()
    work = {"input": "source", "command": [sys.executable, str(script), str(state)], "concurrency": 2}
    spec = {"apiVersion": "batchmesh/v1", "name": pipeline_name, "source": {"path": "."},
            "stages": {"slow": {"work": work}}}
    keys = Keys(settings.pipeline)
    progress = Progress(client, keys)
    client.xadd(keys.stream("source"), WorkItem(id="video-1.mp4", data={"n": 1}).encode())

    first = start_worker(spec, "slow", settings, log)
    orphan = 0
    try:
        wait_for(lambda: progress.state_of("video-1.mp4") == RUNNING, what="item running")
        orphan = int(wait_for(lambda: (state / "first.pid").exists() and (state / "first.pid").read_text(),
                              what="command started"))
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        assert not group_exists(first.pid), "the killed worker's process group is gone"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        # The command runs in its own session (so a timeout can kill its whole group): the SIGKILLed worker could
        # not take it along. End it here so it cannot finish late.
        if orphan and alive(orphan):
            os.killpg(orphan, signal.SIGKILL)
    wait_for(lambda: not alive(orphan), what="orphaned command gone")
    assert not (state / "completions.log").exists()

    second = start_worker(spec, "slow", settings, log)
    try:
        wait_for(lambda: progress.state_of("video-1.mp4") == DONE, what="reclaimed item done")
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, log.read_text()
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()

    assert (state / "completions.log").read_text().split() == ["video-1.mp4"]
    got = results(client, keys)
    assert list(got) == ["video-1.mp4"] and got["video-1.mp4"]["pid"] != orphan
    assert progress.counts()[DONE] == 1
    assert int(client.hget(keys.stage_stats("slow"), "out")) == 1
    assert client.hget(keys.stage_stats("slow"), "failed") is None
    assert [p.name for p in (settings.out_dir / "slow").iterdir()] == ["video-1.mp4"]
    assert [p.name for p in (settings.out_dir / "slow" / "video-1.mp4").iterdir()] == ["result.json"]
    assert client.xpending(keys.stream("source"), "slow")["pending"] == 0
    assert list_dead_letters(client, keys, "slow") == []


def test_lease_keeps_slow_items_from_running_twice(
    client: redis.Redis, settings: Settings, pipeline_name: str, tmp_path: Path
) -> None:
    """Items take 2.5 s, the visibility timeout is 1 s: without renewal the other replica would reclaim them. (Renewed
    every third of it, a renewal may come 0.67 s late on a loaded machine before a reclaim could win; at 300 ms it
    could be only 0.2 s late.)"""
    settings = settings.model_copy(update={"out_dir": tmp_path / "out", "visibility_timeout_ms": 1000})
    (tmp_path / "nap.py").write_text(NAP)
    work = {"input": "source", "command": [sys.executable, str(tmp_path / "nap.py")], "concurrency": 1}
    spec = {"apiVersion": "batchmesh/v1", "name": pipeline_name, "source": {"path": "."},
            "stages": {"slow": {"work": work}}}
    keys, runs = Keys(settings.pipeline), tmp_path / "runs.log"
    for i in range(4):
        client.xadd(keys.stream("source"), WorkItem(id=f"s{i}", data={"sleep": 2.5, "log": str(runs)}).encode())
    workers = [start_worker(spec, "slow", settings, tmp_path / "workers.log") for _ in range(2)]
    try:
        wait_for(lambda: Progress(client, keys).counts()[DONE] == 4, what="all done")
    finally:
        for proc in workers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
    assert sorted(runs.read_text().split()) == ["s0", "s1", "s2", "s3"]
    assert list_dead_letters(client, keys, "slow") == []
