"""Breaker (issue 12 review): the process executor's inline loop (commands watched in one selector, results
committed on a committer thread that shares the loop's consumer) while its connections are killed again and again
(`CLIENT KILL`: a commit on the committer thread or a read, hold or heartbeat on the loop's, cut off with its reply
unread) and Redis freezes past its command timeout (a busy script), items arriving throughout. Exactly once: each
item's output published once (the arrivals counter of the next stage's input), nothing pending, nothing held,
nothing dead-lettered, the executor still alive. Real Redis, real subprocesses."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis
from promql import poll
from test_breaker_worker_faults import _faults

from services.core import Keys, Settings, WorkItem
from services.core.spec import Pipeline
from services.manager.executors import StageContext, executor_class, stage_settings


def _produce(client: redis.Redis, stream: str, stop: threading.Event, ids: list[str]) -> None:
    while not stop.is_set():
        batch = [f"i{len(ids) + j}" for j in range(10)]
        pipe = client.pipeline(transaction=False)
        for item_id in batch:
            pipe.xadd(stream, WorkItem(id=item_id, data={}).encode())
        pipe.execute()
        ids += batch
        time.sleep(0.02)


def test_the_process_executor_stays_exactly_once_through_killed_connections(client: redis.Redis,
                                                                            settings: Settings,
                                                                            tmp_path: Path) -> None:
    name = settings.pipeline
    keys = Keys(name)
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
        "stages": {"w": {"work": {"input": "source", "executor": "process", "concurrency": 2,
                                  "command": ["sh", "-c", "echo '{}'"]}},
                   "b": {"work": {"input": "w", "worker": "noop"}}}})
    cfg = settings.model_copy(update={"redis_timeout_s": 0.2, "visibility_timeout_ms": 800, "max_deliveries": 1000,
                                      "out_dir": tmp_path / "out"})
    ours = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "client_name": "breaker"}))
    theirs = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "socket_timeout": 0.3}))
    ours.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    ours.xgroup_create(keys.stream("w"), "b", id="0", mkstream=True)
    executor = executor_class("process")(StageContext(theirs, pipeline, "w", stage_settings(pipeline, "w", cfg)))
    ids: list[str] = []
    fault_stop, faults = threading.Event(), []
    producer = threading.Thread(target=_produce, args=(ours, keys.stream("source"), fault_stop, ids), daemon=True)
    chaos = threading.Thread(target=_faults, args=(ours, fault_stop, faults), daemon=True)
    executor.start()
    try:
        producer.start()
        chaos.start()
        chaos.join(120)
        fault_stop.set()
        producer.join(10)
        n = len(ids)
        poll(lambda: (int(ours.hget(keys.arrivals(), keys.stream("w")) or 0) >= n
                      and not ours.xpending(keys.stream("source"), "w")["pending"]), 120, 0.1)
        assert executor.alive and executor.error is None
    finally:
        fault_stop.set()
        executor.stop(10)
    try:
        assert len(faults) >= 20 and n > 0
        assert int(ours.hget(keys.arrivals(), keys.stream("w")) or 0) == n  # each output published once
        assert ours.xlen(keys.stream("w")) == n
        assert ours.xpending(keys.stream("source"), "w")["pending"] == 0
        assert ours.hlen(f"{keys.prefix}:held:w") == 0
        assert ours.xlen(keys.dead_letters("w")) == 0
    finally:
        ours.close()
        theirs.close()
