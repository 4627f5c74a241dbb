"""The autoscaler against a real Redis: workers record their service time in the stage stats, the manager's
autoscaler turns the totals into a decision, stores it, and status() (what every actuator reads) reports it."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from services.core import Keys, Settings, WorkItem
from services.core.spec import Pipeline
from services.manager import status
from services.manager.autoscale import Autoscaler, Rule
from services.workers import run_worker, worker


def make_pipeline(name: str, **stages: dict[str, Any]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": stages})


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def running(pipeline: Pipeline, stage: str, settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(pipeline, stage, settings, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@worker("test-autoscale-slow")
def slow(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    time.sleep(0.02)
    return {"ok": True}


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_workers_record_service_time_and_the_manager_decides(client: redis.Redis, settings: Settings,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = settings.pipeline
    pipeline = make_pipeline(name, w={"work": {"input": "source", "worker": "test-autoscale-slow", "concurrency": 1,
                                               "replicas": {"min": 0, "max": 6}}})
    keys = Keys(name)
    for stream in ("source",):
        client.xgroup_create(keys.stream(stream), "w", id="0", mkstream=True)
    assert status(client, pipeline)["stages"]["w"]["desired_replicas"] == 0  # idle, no decision: min
    clock = Clock()
    scaler = Autoscaler(client, pipeline, Rule(drain_s=10, window_s=30, rate_window_s=10), clock=clock)
    scaler.observe(status(client, pipeline))

    cfg = settings.model_copy(update={"out_dir": tmp_path / "out"})
    items = [WorkItem(id=f"i{n}", data={"n": n}) for n in range(10)]
    with running(pipeline, "w", cfg):
        for item in items:
            client.xadd(keys.stream("source"), item.encode())
        client.hincrby(keys.arrivals(), keys.stream("source"), len(items))  # what the manager's dispatch adds
        wait_for(lambda: int(client.hget(keys.stage_stats("w"), "timed") or 0) == 10, what="10 items timed")
    service_us = int(client.hget(keys.stage_stats("w"), "service_us"))
    assert 10 * 20_000 <= service_us < 10 * 200_000

    client.hincrby(keys.arrivals(), keys.stream("source"), 200)  # 200 more within 2 s: λ = 105/s over the window
    client.xadd(keys.stream("source"), WorkItem(id="x", data={}).encode())
    clock.t += 2
    caplog.set_level(logging.INFO, logger="services.manager.autoscale")
    snap = status(client, pipeline)
    [d] = scaler.observe(snap).values()
    assert d.arrival_rate == pytest.approx(105) and d.service_s == pytest.approx(service_us / 10 / 1e6)
    # the smallest r with S / r < 0.8 / λ, plus one to drain the one entry within T, at most max
    assert d.desired == min(6, math.floor(105 * d.service_s / 0.8) + 1 + 1)
    assert snap["stages"]["w"]["desired_replicas"] == d.desired
    client.hincrby(keys.arrivals(), keys.stream("source"), 2000)  # a burst: clamped to max
    clock.t += 1
    snap = status(client, pipeline)
    [d] = scaler.observe(snap).values()
    assert d.desired == 6 and snap["stages"]["w"]["desired_replicas"] == 6
    change = [r for r in caplog.records if getattr(r, "event", "") == "autoscale.change"][-1]
    assert change.to == 6 and change.backlog == 1
    labels = {"pipeline": name, "stage": "w"}
    assert REGISTRY.get_sample_value("batchmesh_autoscaler_desired_replicas", labels) == 6
    assert REGISTRY.get_sample_value("batchmesh_autoscaler_arrival_rate", labels) == pytest.approx(2210 / 3)

    again = status(client, pipeline)["stages"]["w"]  # another reader (the runner, the compose autoscaler)
    assert again["desired_replicas"] == 6 and again["autoscale"]["arrival_rate"] == pytest.approx(2210 / 3)
    assert 0 < client.ttl(keys.autoscale()) <= 30
    assert json.loads(client.hget(keys.autoscale(), "w"))["desired"] == 6
    client.delete(keys.autoscale())  # no manager refreshes it: expired
    assert status(client, pipeline)["stages"]["w"]["desired_replicas"] == 1  # backlog 1, no decision: one
