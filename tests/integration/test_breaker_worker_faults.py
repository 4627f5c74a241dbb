"""Breaker (issue 12 review): the worker's fast paths under connection faults, against a real Redis.

The hold is sent before the items run and read before the commit (core.held.send_hold); the usual commit is one
script in MULTI/EXEC with the next read folded in after EXEC (core.fast_commit). Here two stages of real worker
threads (two replicas on the first) run while their connections are killed again and again (`CLIENT KILL`: a hold
unread, a commit's reply unread, a read ahead never seen) and Redis freezes for longer than the workers'
command timeout (a busy script, as DEBUG SLEEP: a commit applied after its caller gave up), while items keep
arriving. Exactly once: every item done once, each first-stage output published once (the arrivals counter of
the second stage's input), nothing left pending or held, nothing dead-lettered."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from promql import poll

from services.core import Keys, Progress, Settings, WorkItem
from services.core.spec import Pipeline
from services.workers import run_worker

_FREEZE = """
local function ms() local t = redis.call('TIME'); return t[1] * 1000 + t[2] / 1000 end
local until_ = ms() + tonumber(ARGV[1])
while ms() < until_ do end
return 1
"""


def _faults(client: redis.Redis, stop: threading.Event, done: list[str]) -> None:
    """Kill every worker connection (not this test's own: their clients are named "breaker"), or freeze Redis."""
    rng = random.Random(12)
    while not stop.is_set() and len(done) < 40:
        time.sleep(rng.uniform(0.01, 0.06))
        try:
            if len(done) % 8 == 7:  # longer than the workers' command timeout: their calls time out meanwhile
                client.eval(_FREEZE, 0, 600)  # DEBUG SLEEP, which Redis 7 refuses by default (enable-debug-command)
                done.append("freeze")
            else:
                theirs = [c["id"] for c in client.client_list() if c.get("name") != "breaker"]
                for client_id in theirs:
                    client.client_kill_filter(_id=client_id)
                done.append(f"kill {len(theirs)}")
        except redis.RedisError:
            pass


def storm(ours: redis.Redis, roles: list[threading.Thread], producer: threading.Thread, stop: threading.Event,
          fault_stop: threading.Event, faults: list[str], finished: Callable[[], Any], settle_s: float = 0.0) -> None:
    """Start the roles, then the producer and the faults (`_faults` on `ours`); once both are over, wait up to
    120 s for `finished()` (and `settle_s` more), then stop the roles and join them."""
    chaos = threading.Thread(target=_faults, args=(ours, fault_stop, faults), daemon=True)
    for thread in (*roles, producer, chaos):
        thread.start()
    try:
        producer.join(120)
        chaos.join(120)
        poll(finished, 120, 0.1)
        time.sleep(settle_s)
    finally:
        fault_stop.set()
        stop.set()
        for role in roles:
            role.join(30)


def _produce(client: redis.Redis, keys: Keys, stop: threading.Event, ids: list[str]) -> None:
    """Items keep arriving while the faults go on, so that every fault meets items in flight."""
    progress = Progress(client, keys)
    while not stop.is_set():
        batch = [f"i{len(ids) + j}" for j in range(10)]
        progress.mark(batch, "queued")
        pipe = client.pipeline(transaction=False)
        for item_id in batch:
            pipe.xadd(keys.stream("source"), WorkItem(id=item_id, data={"n": item_id}).encode())
        pipe.execute()
        ids += batch
        time.sleep(0.005)


def test_workers_stay_exactly_once_through_killed_connections_and_a_frozen_redis(
        client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    name = settings.pipeline
    keys = Keys(name)
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                        "stages": {"a": {"work": {"input": "source", "worker": "noop"}},
                                                   "b": {"work": {"input": "a", "worker": "noop"}}}})
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out", "max_deliveries": 1000, "redis_timeout_s": 0.2,
                                      "batch_size": 20})
    client.xgroup_create(keys.stream("source"), "a", id="0", mkstream=True)
    client.xgroup_create(keys.stream("a"), "b", id="0", mkstream=True)
    ours = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "client_name": "breaker"}))
    ids: list[str] = []
    stop, fault_stop, faults = threading.Event(), threading.Event(), []
    workers = [threading.Thread(target=run_worker, args=(pipeline, stage, cfg, stop), daemon=True)
               for stage in ("a", "a", "b")]
    for w in workers:
        w.start()
    chaos = threading.Thread(target=_faults, args=(ours, fault_stop, faults), daemon=True)
    producer = threading.Thread(target=_produce, args=(ours, keys, fault_stop, ids), daemon=True)
    producer.start()
    chaos.start()
    try:
        chaos.join(120)
    finally:
        fault_stop.set()
        chaos.join(10)
        producer.join(10)
    n = len(ids)
    try:  # then the workers finish what is in flight, reclaimed after the visibility timeout if need be
        poll(lambda: client.hlen(keys.results()) >= n, 120, 0.1)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        ours.close()
    assert len(faults) >= 20, faults  # the faults happened while the items flowed
    assert not any(w.is_alive() for w in workers)
    assert n > 0 and client.hlen(keys.results()) == n
    counts = Progress(client, keys).counts()
    assert counts["done"] == n and counts["running"] == 0 and counts["queued"] == 0, counts
    assert int(client.hget(keys.arrivals(), keys.stream("a")) or 0) == n  # a's outputs published once each
    for stream, group in (("source", "a"), ("a", "b")):
        assert client.xpending(keys.stream(stream), group)["pending"] == 0
    assert client.hlen(f"{keys.prefix}:held:a") == 0 and client.hlen(f"{keys.prefix}:held:b") == 0
    assert client.xlen(keys.dead_letters("a")) == 0 and client.xlen(keys.dead_letters("b")) == 0
