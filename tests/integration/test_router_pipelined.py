"""The server-side router's pipelined calls under a backlog (issue 12): the next route call is sent before the
previous reply is read. Each call is atomic and starts from the consumer group's position when it runs, so every
entry is still routed exactly once: by one router, by replicas racing on the same group, and across a connection
killed with calls in flight."""

from __future__ import annotations

from collections import Counter

import pytest
import redis

from services.core import Keys, Settings, WorkItem
from services.core.spec_routers import CopySpec
from services.router import build_router


def fill(client: redis.Redis, key: str, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, WorkItem(id=f"i{i}", data={"n": i}).encode())
    pipe.execute()


def ids(client: redis.Redis, key: str) -> list[str]:
    return [WorkItem.decode(fields).id for _, fields in client.xrange(key)]


def copier(client: redis.Redis, settings: Settings):  # type: ignore[no-untyped-def]
    return build_router(client, settings.model_copy(update={"batch_size": 50}), "c",
                        CopySpec(input="in", to=["a", "b"]), server_side=True)


def test_a_backlog_keeps_a_call_in_flight_and_routes_every_entry_once(client: redis.Redis,
                                                                     settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    router = copier(client, settings)
    fill(client, keys.stream("in"), 2000)
    taken = [router.step(), router.step()]
    assert taken[0] == 50 and router._inflight is not None  # a full call: the next one was sent behind it
    while n := router.step():
        taken.append(n)
    assert router._inflight is None  # a step that returns 0 leaves nothing in flight
    assert sum(taken) == 2000
    expected = [f"i{i}" for i in range(2000)]
    assert ids(client, keys.stream("c.a")) == expected and ids(client, keys.stream("c.b")) == expected
    assert client.xpending(keys.stream("in"), "c")["pending"] == 0


def test_leave_reads_the_call_in_flight(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    router = copier(client, settings)
    fill(client, keys.stream("in"), 1000)
    taken = router.step() + router.step()
    assert router._inflight is not None
    router.leave()
    assert router._inflight is None
    assert client.xlen(keys.stream("c.a")) > taken  # the call in flight ran, and leave() read its reply
    assert ids(client, keys.stream("c.a")) == [f"i{i}" for i in range(client.xlen(keys.stream("c.a")))]


def test_replicas_racing_on_one_group_route_every_entry_once(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    routers = [copier(client, settings), copier(client, settings)]
    fill(client, keys.stream("in"), 3000)
    busy = [True, True]
    while any(busy):
        for i, r in enumerate(routers):
            busy[i] = bool(r.step())
    for r in routers:
        r.finish()
    for out in ("c.a", "c.b"):
        counts = Counter(ids(client, keys.stream(out)))
        assert len(counts) == 3000 and set(counts.values()) == {1}


def test_a_connection_killed_with_calls_in_flight_loses_and_doubles_nothing(client: redis.Redis,
                                                                          settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    router = copier(client, settings)
    fill(client, keys.stream("in"), 3000)
    router.step()
    router.step()
    assert router._inflight is not None
    calling = [c for c in client.client_list() if c["cmd"] == "evalsha"]  # the one the calls are in flight on
    assert len(calling) == 1
    client.client_kill_filter(_id=calling[0]["id"])
    with pytest.raises(redis.ConnectionError):
        for _ in range(100):  # the kill lands between two calls or during one: a later read sees it
            router.step()
    assert router._inflight is None
    while router.step() or not router.caught_up():
        pass
    for out in ("c.a", "c.b"):
        assert ids(client, keys.stream(out)) == [f"i{i}" for i in range(3000)]
