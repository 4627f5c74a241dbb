"""The server-side router's call sizing and waiting (issue 12): a backlog is routed in calls sized by their measured
Redis time, a caught-up router waits inside Redis and routes what arrives in the same step, and a flushed script
cache costs nothing."""

from __future__ import annotations

import threading
import time

import redis

from services.core import Keys, Settings, WorkItem
from services.core.spec_routers import CopySpec, MergeSpec
from services.router import build_router
from services.router.base import CALL_BUDGET_MS, MAX_LUA_COUNT


def fill(client: redis.Redis, key: str, n: int, prefix: str = "i") -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, WorkItem(id=f"{prefix}{i}", data={"n": i}).encode())
    pipe.execute()


def test_a_backlog_is_routed_in_calls_sized_by_their_redis_time(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    router = build_router(client, settings.model_copy(update={"batch_size": 50}), "c", CopySpec(input="in",
                          to=["a", "b"]), server_side=True)
    fill(client, keys.stream("in"), 3000)
    assert router.step() == 50  # the first call takes the configured batch
    sizes = []
    while taken := router.step():
        sizes.append(taken)
    assert sum(sizes) == 2950
    assert router._entry_us is not None and router._entry_us > 0  # measured on the server's clock
    expected = max(50, min(MAX_LUA_COUNT, int(CALL_BUDGET_MS * 1000 / router._entry_us)))
    assert router.lua_count == expected  # what fits the budget, never less than the configured 50
    assert router.count == 50  # the Python path's batch is the configured one
    assert client.xlen(keys.stream("c.a")) == client.xlen(keys.stream("c.b")) == 3000
    assert client.xpending(keys.stream("in"), "c")["pending"] == 0


def test_a_merge_never_takes_more_than_its_share(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    router = build_router(client, settings.model_copy(update={"batch_size": 64}), "m",
                          MergeSpec(inputs=["x", "y"]), server_side=True)
    fill(client, keys.stream("x"), 2000)
    while router.step():
        assert router.lua_count == 32
    assert client.xlen(keys.stream("m")) == 2000


def test_a_caught_up_router_routes_what_arrives_while_it_waits_in_the_same_step(
    client: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.pipeline)
    router = build_router(client, settings, "c", CopySpec(input="in", to=["a"]), server_side=True)
    assert router.step(2000) == 0  # caught up: the next step waits inside Redis
    later = threading.Timer(0.2, fill, args=(client, keys.stream("in"), 1))
    later.start()
    started = time.monotonic()
    try:  # a long block (it costs nothing when woken): the bound below tells a wake from a timeout under load too
        assert router.step(6000) == 1  # the entry was routed by the call pipelined behind the wait
    finally:
        later.join()
    assert time.monotonic() - started < 3.0, "woken by the entry, not by the block timeout"
    assert client.xlen(keys.stream("c.a")) == 1
    client.script_flush()  # a restarted Redis forgets scripts: the waiting call loads it again
    assert router.step(100) == 0
    fill(client, keys.stream("in"), 2, prefix="j")
    assert router.step(100) == 2
    assert client.xlen(keys.stream("c.a")) == 3
