"""Routers as running stages: the entry point, waking up on new entries, choosing the path, drop hooks, what a
failed step leaves behind, and entries another consumer left pending."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from redis.client import Pipeline

from services.core import DONE, CommitError, Keys, Progress, Settings, StreamConsumer, WorkItem
from services.core.spec_routers import CopySpec, FilterSpec, ShardSpec, SplitSpec
from services.router import Splitter, build_router, run_router


def add(client: redis.Redis, keys: Keys, stream: str, *items: WorkItem) -> None:
    for item in items:
        client.xadd(keys.stream(stream), item.encode())


def ids(client: redis.Redis, keys: Keys, stream: str) -> list[str]:
    return [WorkItem.decode(f).id for _, f in client.xrange(keys.stream(stream))]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.005)
    raise AssertionError("timed out")


@pytest.mark.parametrize("server_side", [True, False])
def test_run_router_wakes_up_on_new_entries_and_leaves_cleanly(
    client: redis.Redis, settings: Settings, server_side: bool
) -> None:
    settings = settings.model_copy(update={"block_ms": 4000})  # an idle router must be woken, not poll
    keys, stop = Keys(settings.pipeline), threading.Event()
    spec = SplitSpec(input="in", by="data.channel", routes={"sms": "sms"}, default="email")
    thread = threading.Thread(target=run_router, args=(settings.pipeline, "notify", spec, settings, stop),
                              kwargs={"server_side": server_side})
    thread.start()
    try:
        wait_for(lambda: client.exists(keys.stream("in")))  # the group exists: the router is up
        time.sleep(0.2)  # and is now blocked waiting
        started = time.monotonic()
        add(client, keys, "in", WorkItem(id="u1", data={"channel": "sms"}), WorkItem(id="u2", data={}))
        wait_for(lambda: client.xlen(keys.stream("notify.email")) == 1 and client.xlen(keys.stream("notify.sms")))
        # half the block timeout: a loaded machine's scheduling delays are allowed, a wait for the timeout is not
        assert time.monotonic() - started < 2.0, "woken by the new entries, not by the block timeout"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert ids(client, keys, "notify.sms") == ["u1"] and ids(client, keys, "notify.email") == ["u2"]
    assert client.xinfo_consumers(keys.stream("in"), "notify") == []  # left the group: nothing pending


def test_the_path_is_chosen_by_the_expression(client: redis.Redis, settings: Settings) -> None:
    simple = FilterSpec(input="in", where="data.promo == `true`")
    complex_ = FilterSpec(input="in", where="length(data.tags) > `1`")
    assert build_router(client, settings, "f1", simple).server_side is True
    assert build_router(client, settings, "f2", complex_).server_side is False
    assert build_router(client, settings, "f3", simple, server_side=False).server_side is False
    assert build_router(client, settings, "c", CopySpec(input="in", to=["a", "b"])).server_side is True
    with pytest.raises(ValueError, match="cannot run server-side"):
        build_router(client, settings, "f4", complex_, server_side=True)
    with pytest.raises(ValueError, match="calls back into Python"):
        build_router(client, settings, "f5", simple, server_side=True, on_drop=lambda pipe, ids: None)
    assert build_router(client, settings, "f6", simple, on_drop=lambda pipe, ids: None).server_side is False


def test_a_splitter_without_default_route_cannot_be_built(client: redis.Redis, settings: Settings) -> None:
    spec = SplitSpec.model_construct(input="in", by="data.kind", routes={"a": "a"}, default=None)
    with pytest.raises(ValueError, match="default route"):
        Splitter(client, settings, "split", spec)


@pytest.mark.parametrize("server_side", [True, False])
def test_dropped_items_are_acked_counted_and_get_the_drop_state(
    client: redis.Redis, settings: Settings, server_side: bool
) -> None:
    keys = Keys(settings.pipeline)
    router = build_router(client, settings, "promo", FilterSpec(input="in", where="data.promo"),
                          server_side=server_side, drop_state=DONE)
    add(client, keys, "in", *(WorkItem(id=f"u{i}", data={"promo": i % 2 == 0}) for i in range(6)))
    before = REGISTRY.get_sample_value("batchmesh_items_filtered_total",
                                       {"pipeline": settings.pipeline, "stage": "promo"}) or 0
    assert router.step() == 6
    assert ids(client, keys, "promo") == ["u0", "u2", "u4"]
    assert client.xpending(keys.stream("in"), "promo")["pending"] == 0
    progress = Progress(client, keys)
    assert [progress.state_of(f"u{i}") for i in range(6)] == [None, DONE, None, DONE, None, DONE]
    assert progress.counts()[DONE] == 3
    assert client.hget(keys.stage_stats("promo"), "filtered") == b"3"
    assert REGISTRY.get_sample_value("batchmesh_items_filtered_total",
                                     {"pipeline": settings.pipeline, "stage": "promo"}) == before + 3


def test_on_drop_runs_inside_the_commit(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    seen: list[list[str]] = []

    def on_drop(pipe: Pipeline, dropped: list[str]) -> None:
        seen.append(dropped)
        pipe.sadd(keys.prefix + ":dropped", *dropped)

    router = build_router(client, settings, "f", FilterSpec(input="in", where="data.keep"), on_drop=on_drop)
    add(client, keys, "in", WorkItem(id="a", data={"keep": 1}), WorkItem(id="b"), WorkItem(id="c"))
    router.step()
    assert seen == [["b", "c"]] and client.smembers(keys.prefix + ":dropped") == {b"b", b"c"}


@pytest.mark.parametrize("server_side", [True, False])
def test_a_step_that_cannot_write_writes_nothing(client: redis.Redis, settings: Settings, server_side: bool) -> None:
    keys = Keys(settings.pipeline)
    router = build_router(client, settings, "fan", CopySpec(input="in", to=["a", "b"]), server_side=server_side)
    client.set(keys.stream("fan.b"), "not a stream")
    add(client, keys, "in", WorkItem(id="x"))
    with pytest.raises((redis.ResponseError, CommitError), match="not a stream|WRONGTYPE|holds a string"):
        router.step()
    assert client.xlen(keys.stream("fan.a")) == 0  # not half done: a is not written when b cannot be
    client.delete(keys.stream("fan.b"))
    time.sleep(settings.visibility_timeout_ms / 1000 + 0.1)  # the Python path left it pending: reclaimed
    while router.step() or not router.caught_up():
        pass
    assert ids(client, keys, "fan.a") == ["x"] and ids(client, keys, "fan.b") == ["x"]


def test_the_server_side_router_routes_what_a_crashed_consumer_left_pending(
    client: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.pipeline)
    spec = ShardSpec(input="in", key="data.user", shards=2, spill=False)
    router = build_router(client, settings, "zones", spec, server_side=True)
    add(client, keys, "in", *(WorkItem(id=f"i{i}", data={"user": f"u{i % 3}"}) for i in range(10)))
    dead = StreamConsumer(client, settings, stage="zones", input_stream="in", consumer="crashed")
    assert len(dead.read(4, block_ms=0)) == 4  # read, never committed: the consumer died
    time.sleep(settings.visibility_timeout_ms / 1000 + 0.1)
    while router.step() or not router.caught_up():
        pass
    routed = ids(client, keys, "zones.0") + ids(client, keys, "zones.1")
    assert sorted(routed) == sorted(f"i{i}" for i in range(10))  # each exactly once
    assert client.hget(keys.stage_stats("zones"), "out") == b"10"
