"""core.wire against a real Redis: replies in order, error replies as values, the connection back in the pool
once read, and every unanswered send lost (never read off a reused connection) when the connection fails."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import ConnectionError, ResponseError

from services.core.wire import Wire


@pytest.mark.one_backend
def test_replies_come_back_in_order_and_the_connection_goes_back(client: redis.Redis, pipeline_name: str) -> None:
    key = f"{pipeline_name}:wire"
    wire = Wire(client)
    first = wire.send([("INCR", key), ("INCR", key)])
    second = wire.send([("HSET", key, "f", "v"), ("INCR", key)])  # a WRONGTYPE reply: a value, read past
    assert wire.in_flight == 2
    replies = second.replies()  # reads the first send's replies on the way and keeps them
    assert isinstance(replies[0], ResponseError) and replies[1] == 3
    assert first.replies() == [1, 2]
    assert wire.in_flight == 0 and wire._conn is None  # given back: the pool has it again
    assert wire.send([("GET", key)]).replies() == [b"3"]


@pytest.mark.one_backend
def test_a_failed_connection_loses_every_unanswered_send(client: redis.Redis, pipeline_name: str) -> None:
    key = f"{pipeline_name}:wire"
    wire = Wire(client)
    (victim,) = wire.send([("CLIENT", "ID")]).replies()
    first = wire.send([("INCR", key)])
    first.replies()
    held = wire.send([("BLPOP", f"{key}:never", 5)])  # still in flight when its connection is killed
    behind = wire.send([("INCR", key)])
    assert client.client_kill_filter(_id=victim) == 1
    with pytest.raises(ConnectionError):
        held.replies()
    assert held.lost and behind.lost
    with pytest.raises(ConnectionError):
        behind.replies()
    assert wire.send([("INCR", key)]).replies() == [2]  # a fresh connection; `behind` never ran


@pytest.mark.one_backend
def test_an_abandoned_send_drops_the_connection_not_the_next_reply(client: redis.Redis, pipeline_name: str) -> None:
    key = f"{pipeline_name}:wire"
    wire = Wire(client)
    wire.send([("SET", key, "old")]).abandon()
    assert wire._conn is None
    assert wire.send([("SET", key, "new"), ("GET", key)]).replies() == [b"OK", b"new"]
