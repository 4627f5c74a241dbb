"""Crash safety: a router process SIGKILLed mid-batch, then restarted, leaves every input on every output
exactly once. On the Python path the kill lands between reading a batch and committing it (the commit is held
open on purpose): that batch is pending, reclaimed by the restarted router after the visibility timeout and routed
once. On the server-side path a batch is one script call, so a kill at any moment finds it either done or not
begun: the router is killed while it is busy routing a long stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from router_pace import PACE

from services.core import Keys, Settings, WorkItem
from services.core.spec_routers import CopySpec

REPO = Path(__file__).resolve().parents[2]

# Runs one router like a container does. With ROUTER_HANG_AT=n, the n-th commit is never made: the process
# writes ROUTER_MARKER and sleeps, holding its batch read and pending, until it is killed. ROUTER_PACE_S (see
# router_pace): N / batch steps take N / 50 * s at least, so the router is still routing when the test kills it.
LAUNCHER = PACE + """
import json, os, signal, sys, threading, time
from services.core import stage
from services.router.base import Router
from services.core.settings import Settings
from services.core.spec_routers import ROUTER_SPECS
from services.router import run_router
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
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
kind, body, name, server = sys.argv[1:5]
run_router(os.environ["BATCHMESH_PIPELINE"], name, ROUTER_SPECS[kind].model_validate(json.loads(body)), Settings(),
           stop, server_side={"python": False, "server": True, "auto": None}[server])
"""

SPEC = CopySpec(input="in", to=["a", "b"])
N = 5000


def start(settings: Settings, path: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "REDIS_URL": settings.redis_url or "",
                   "BATCHMESH_PIPELINE": settings.pipeline, "BATCHMESH_BATCH_SIZE": "50",
                   "BATCHMESH_VISIBILITY_TIMEOUT_MS": str(settings.visibility_timeout_ms),
                   "BATCHMESH_BLOCK_MS": "100", **env}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", LAUNCHER, "copy", SPEC.model_dump_json(), "fan", path],
                                cwd=REPO, env=environment, stdout=out, stderr=out, start_new_session=True)


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.005)
    raise AssertionError("timed out")


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def routed(client: redis.Redis, keys: Keys, branch: str) -> Counter[str]:
    return Counter(WorkItem.decode(f).id for _, f in client.xrange(keys.stream(f"fan.{branch}")))


@pytest.mark.parametrize("first, restart", [("python", "python"), ("python", "server"), ("server", "server")])
def test_sigkill_mid_batch_then_restart_routes_each_input_exactly_once(
    client: redis.Redis, settings: Settings, tmp_path: Path, first: str, restart: str
) -> None:
    keys, log, marker = Keys(settings.pipeline), tmp_path / "router.log", tmp_path / "hung"
    client.xgroup_create(keys.stream("in"), "fan", id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(keys.stream("in"), WorkItem(id=f"u{i}", data={"i": i}).encode())
    pipe.execute()

    # the server path is paced (100 steps of >= 20 ms): killed at 500 of 5000, it has >= 1.8 s of routing left
    hang = {"ROUTER_HANG_AT": "3", "ROUTER_MARKER": str(marker)} if first == "python" else {"ROUTER_PACE_S": "0.02"}
    proc = start(settings, first, log, **hang)
    try:
        if first == "python":
            wait_for(marker.exists)
            assert client.xlen(keys.stream("fan.a")) == 100  # two batches committed, the third read and held
            assert client.xpending(keys.stream("in"), "fan")["pending"] == 50
        else:
            wait_for(lambda: client.xlen(keys.stream("fan.a")) >= 500)  # busy: kill it while it routes
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        kill(proc)
    a_at_kill = client.xlen(keys.stream("fan.a"))
    assert a_at_kill < N, "the router finished before it was killed: the test proves nothing"
    assert client.xlen(keys.stream("fan.b")) == a_at_kill  # never one branch without the other

    proc = start(settings, restart, log)
    try:
        wait_for(lambda: client.xlen(keys.stream("fan.a")) >= N and
                 client.xpending(keys.stream("in"), "fan")["pending"] == 0)
        time.sleep(0.3)  # anything extra would show up now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        kill(proc)
    want = Counter(f"u{i}" for i in range(N))
    assert routed(client, keys, "a") == want, "every input exactly once on branch a"
    assert routed(client, keys, "b") == want, "every input exactly once on branch b"
    assert int(client.hget(keys.stage_stats("fan"), "out")) == N
    assert json.loads(client.xrange(keys.stream("fan.a"), count=1)[0][1][b"item"]) == {"id": "u0", "data": {"i": 0}}
