"""The runner itself rides out a Redis outage (issue 10, fault 11): `batchmesh run --watch` on an external
redis-server (AOF on) that is SIGKILLed and restarted on the same port and data dir ~2 s later. The runner never
exits, says once on stderr that Redis is unreachable and once that it is back, and the files added afterwards are
processed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from live_run import KillableRedis, start_run, stop_run, wait_for

from services.core import Keys

pytestmark = pytest.mark.one_backend

SPEC = """
apiVersion: batchmesh/v1
kind: Pipeline
name: ride
source: {type: directory, path: ./in, glob: "*.txt", poll: 0.3s}
defaults: {visibility_timeout: 1.5s, max_deliveries: 20}
stages:
  work:  {work: {input: source, worker: sleep, replicas: {min: 1, max: 1}}}
  total: {reduce: {input: work, fold: {files: {count: true}}}}
"""


def _files(root: Path, start: int, n: int) -> None:
    for i in range(start, start + n):
        (root / f"f{i:03d}.txt").write_text(f"file {i}")


def test_run_watch_rides_out_a_redis_restart(tmp_path: Path) -> None:
    server = KillableRedis(tmp_path / "redis")
    url = server.start()
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(SPEC)
    source = tmp_path / "in"
    source.mkdir()
    _files(source, 0, 5)
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    keys = Keys("ride")
    run = start_run(tmp_path, spec, source, url, env={"BATCHMESH_SLEEP_SECONDS": "0.02"})
    try:
        wait_for("the first 5 items done", lambda: int(client.hget(keys.counts(), "done") or 0) == 5)
        server.kill()
        wait_for("the runner to notice", lambda: "Redis unreachable" in (tmp_path / "run.log").read_text(),
                 timeout_s=30)
        time.sleep(2)  # down for ~2 s
        assert run.poll() is None, "the runner outlives the outage"
        server.start()
        _files(source, 5, 5)  # added after the restart
        wait_for("the 5 files added afterwards done too", lambda: int(client.hget(keys.counts(), "done") or 0) == 10,
                 timeout_s=30)
        wait_for("the runner to say Redis is back", lambda: "Redis back" in (tmp_path / "run.log").read_text(),
                 timeout_s=30)
        assert run.poll() is None, "the runner never exited"
    finally:
        stop_run(run)
        server.stop()
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count(f"Redis unreachable at {url}") == 1 and log.count("Redis back") == 1, log[-3000:]
