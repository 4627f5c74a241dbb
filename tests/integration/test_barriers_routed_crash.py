"""A filter before a reduce, the filter a real `batchmesh router` process SIGKILLed mid-batch and restarted, the
reduce restarted after the kill: the aggregate equals the fold over the kept items exactly, fired once, every
dropped item counted as skipped. On the Python path the kill lands between reading a batch and committing it (the
commit is held open on purpose): that batch's entries are pending, reclaimed by the restarted router and routed
— recorded — once. On the server-side path a batch is one script call: the router is killed while it routes."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from router_pace import PACE

from services.core import Keys, Progress, Settings, WorkItem
from services.core.spec import load_pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import build_barrier

REPO = Path(__file__).resolve().parents[2]

# `batchmesh router` as a container runs it. With ROUTER_HANG_AT=n the n-th commit is never made: the process
# writes ROUTER_MARKER and sleeps, its batch read and pending, until it is killed. ROUTER_PACE_S: see router_pace.
LAUNCHER = PACE + """
import os, sys, time
from services.core import stage
from services.router.base import Router
hang_at = int(os.environ.get("ROUTER_HANG_AT", "0"))
commits = [0]
real_commit = stage.StreamConsumer.commit
def commit(self, c):
    commits[0] += 1
    if commits[0] == hang_at:
        open(os.environ["ROUTER_MARKER"], "w").write("read, not committed")
        time.sleep(600)
    real_commit(self, c)
stage.StreamConsumer.commit = commit
from services.cli import main
sys.exit(main(sys.argv[1:]))
"""

WHERE = {"server": "data.keep", "python": "not_null(data.keep)"}  # a function call is not simple: Python path
N = {"server": 20_000, "python": 3_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(settings: Settings, spec: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": settings.redis_url or "",
                   "BATCHMESH_BATCH_SIZE": "50", "BATCHMESH_VISIBILITY_TIMEOUT_MS": "300",
                   "BATCHMESH_BLOCK_MS": "100", "BATCHMESH_LOG_JSON": "true", **env}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", LAUNCHER, "router", "--pipeline", str(spec),
                                 "--stage", "keep", "--metrics-port", str(free_port())],
                                cwd=REPO, env=environment, stdout=out, stderr=out, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def routed(client: redis.Redis, keys: Keys) -> int:
    stats = client.hgetall(keys.stage_stats("keep"))
    return int(stats.get(b"out", 0)) + int(stats.get(b"filtered", 0))


@pytest.mark.parametrize("path", ["python", "server"])
def test_sigkilled_filter_and_restarted_reduce_fold_exactly_the_kept_items_once(
        client: redis.Redis, settings: Settings, tmp_path: Path, path: str) -> None:
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(yaml.safe_dump({
        "apiVersion": "batchmesh/v1", "name": settings.pipeline, "source": {"path": str(tmp_path)},
        "stages": {"keep": {"filter": {"input": "source", "where": WHERE[path]}},
                   "gate": {"reduce": {"input": "keep", "fold": {"files": {"count": True}, "n": {"sum": "data.n"}}}},
                   "after": {"work": {"input": "gate", "worker": "noop"}}}}))
    pipeline = load_pipeline(spec)
    keys, log, marker = Keys(settings.pipeline), tmp_path / "router.log", tmp_path / "hung"
    s = settings.model_copy(update={"visibility_timeout_ms": 300})
    rng = random.Random(7)
    n = N[path]
    records: list[dict[str, Any]] = [{"name": f"doc-{i:05d}", "version": "1", "keep": rng.random() < 0.3,
                                      "n": rng.randint(0, 1000)} for i in range(n)]
    batch = batches.new_batch_id()
    batches.announce(client, keys, batch)
    dispatcher = Dispatcher(client, keys, Progress(client, keys), batch=batch)
    for i in range(0, n, 1000):
        dispatcher.dispatch(records[i:i + 1000])
    batches.close(client, keys, batch, n)
    barrier = build_barrier(client, s, pipeline, "gate")

    # the server path is paced (400 steps of >= 10 ms): killed at 1000 of 20000, it has >= 3.8 s of routing left
    hang = {"ROUTER_HANG_AT": "3", "ROUTER_MARKER": str(marker)} if path == "python" else {"ROUTER_PACE_S": "0.01"}
    proc = start(s, spec, log, **hang)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() if path == "python" else routed(client, keys) >= 1000):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            barrier.step(0)  # the reduce folds while the filter routes
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        kill(proc)
    at_kill = routed(client, keys)
    assert at_kill < n, "the router finished before it was killed: the test proves nothing"
    if path == "python":
        assert at_kill == 100 and client.xpending(keys.stream("source"), "keep")["pending"] == 50
    assert client.xrange(keys.stream("gate")) == []

    barrier = build_barrier(client, s, pipeline, "gate")  # the reduce restarted too
    proc = start(s, spec, log)
    try:
        deadline = time.monotonic() + 90
        while not client.xrange(keys.stream("gate")):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            if not barrier.step(100):
                barrier.check_recent()
        time.sleep(0.5)  # anything routed or emitted twice would show up now
        while barrier.step(0):
            pass
        barrier.check_recent()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) in (0, 143), log.read_text()[-3000:]
    finally:
        kill(proc)
    kept = [r for r in records if r["keep"]]
    [final] = [WorkItem.decode(f) for _, f in client.xrange(keys.stream("gate"))]
    assert final.data["aggregate"] == {"files": len(kept), "n": sum(r["n"] for r in kept)}
    assert final.data["items"] == n and final.data["done"] == len(kept) and final.data["skipped"] == n - len(kept)
    assert len(client.xrange(keys.events())) == 1
    assert client.scard(keys.barrier("gate", batch, "skipped")) == n - len(kept)
    assert int(client.hget(keys.stage_stats("keep"), "filtered")) == n - len(kept)  # each drop once
    assert int(client.hget(keys.arrivals(), keys.stream("keep"))) == len(kept)  # each kept item published once
