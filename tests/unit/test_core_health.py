"""Role health, /healthz beside /metrics, `batchmesh probe`, the reconnect backoff and the runner's targets file."""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from services.cli import main
from services.core.health import RoleHealth, check
from services.core.metrics_http import serve
from services.core.probe import DEFAULT_PORT, default_url, probe
from services.core.reconnect import TRANSIENT, Backoff, Reconnect
from services.runner.supervisor import Supervisor


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(base_s=0.1, cap_s=5.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(5.0, 0.1 * 2 ** n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 5.0 and delays[-1] >= 2.5
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= 0.1


def test_busy_loading_is_a_transient_error() -> None:
    assert issubclass(redis.BusyLoadingError, TRANSIENT)
    assert not issubclass(redis.ResponseError, TRANSIENT)


def test_an_outage_is_logged_and_counted_once_however_many_retries(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = f"h{uuid.uuid4().hex[:8]}"
    health = RoleHealth(pipeline, "worker", "s").started()
    try:
        assert _value("batchmesh_role_up", pipeline=pipeline, role="worker", stage="s") == 1
        with caplog.at_level(logging.WARNING):
            for _ in range(5):
                health.redis_down(redis.ConnectionError("Connection refused"))
            assert _value("batchmesh_redis_up", pipeline=pipeline, role="worker") == 0
            assert check() == (False, "worker s: redis: ConnectionError: Connection refused")
            health.redis_up()
            health.redis_up()
        events = [r.__dict__.get("event") for r in caplog.records]
        assert events.count("redis.down") == 1 and events.count("redis.up") == 1
        assert _value("batchmesh_redis_disconnects_total", pipeline=pipeline, role="worker") == 1
        assert _value("batchmesh_redis_up", pipeline=pipeline, role="worker") == 1
        assert check() == (True, "ok")
    finally:
        health.stopped()
    assert _value("batchmesh_role_up", pipeline=pipeline, role="worker", stage="s") == 0
    assert check()[0] is False  # no role running


def test_recover_waits_until_redis_answers_then_runs_then() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.pings = 0

        def ping(self) -> bool:
            self.pings += 1
            if self.pings < 3:
                raise redis.BusyLoadingError("Redis is loading the dataset in memory")
            return True

    client, calls = Flaky(), []
    health = RoleHealth(f"h{uuid.uuid4().hex[:8]}", "router", "r")
    reconnect = Reconnect(client, health)  # type: ignore[arg-type]
    reconnect.backoff = Backoff(base_s=0.001, cap_s=0.002)
    assert reconnect.recover(redis.ConnectionError("gone"), then=lambda: calls.append(1))
    assert client.pings == 3 and calls == [1] and health.redis_ok
    stop = threading.Event()
    stop.set()
    assert not Reconnect(client, health, stop).recover(redis.ConnectionError("gone"))  # stopping: give up


def test_healthz_beside_metrics_and_the_probe_command(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.cli.setup_logging", lambda *_: None)  # keep pytest's log handlers
    port = serve(0, host="127.0.0.1")
    url = f"http://127.0.0.1:{port}/healthz"
    reply = httpx.get(url)
    assert reply.status_code == 503 and reply.json()["status"] == "unhealthy"
    assert probe(url)[0] is False
    assert main(["probe", url]) == 1
    health = RoleHealth(f"h{uuid.uuid4().hex[:8]}", "worker", "w").started()
    try:
        assert httpx.get(url).json() == {"status": "ok"}
        assert probe(url) == (True, '200 {"status": "ok"}')
        assert main(["probe", url]) == 0
        assert "batchmesh_role_up" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        health.redis_down(redis.TimeoutError("Timeout reading from socket"))
        reply = httpx.get(url)
        assert reply.status_code == 503 and "TimeoutError" in reply.json()["reason"]
    finally:
        health.stopped()
    capsys.readouterr()


def test_probe_defaults_and_unreachable_targets() -> None:
    assert default_url({}) == f"http://127.0.0.1:{DEFAULT_PORT}/healthz"
    assert default_url({"BATCHMESH_METRICS_PORT": "9555"}) == "http://127.0.0.1:9555/healthz"
    ok, detail = probe("http://127.0.0.1:1/healthz", timeout_s=0.5)
    assert not ok and "127.0.0.1:1" in detail


def test_the_supervisor_gives_each_role_a_port_and_lists_it_for_prometheus(tmp_path: Path) -> None:
    targets = tmp_path / "run" / "targets.json"
    sup = Supervisor({}, tmp_path / "logs", targets_file=targets)
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(30)"]
    try:
        sup.start_argv("worker-a-0", sleeper, port_flag="--metrics-port", labels={"role": "worker", "stage": "a"})
        sup.start_argv("source", sleeper, port=8123, labels={"role": "source", "stage": ""})
        sup.start_argv("rq-a-0", sleeper)  # no metrics: not a target
        listed = json.loads(targets.read_text())
        assert [e["labels"]["role_name"] for e in listed] == ["source", "worker-a-0"]
        worker = sup.roles["worker-a-0"]
        assert listed[1] == {"targets": [f"127.0.0.1:{worker.port}"],
                             "labels": {"role": "worker", "stage": "a", "role_name": "worker-a-0"}}
        assert worker.process is not None and worker.process.args[-2:] == ["--metrics-port", str(worker.port)]
        sup.stop("worker-a-0", grace_s=1)
        assert [e["labels"]["role_name"] for e in json.loads(targets.read_text())] == ["source"]
        assert not list(targets.parent.glob("*.tmp"))  # written whole, then renamed
    finally:
        sup.stop_all(grace_s=1)
    assert json.loads(targets.read_text()) == []
