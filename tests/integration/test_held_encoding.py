"""The held index (core.held) is a hash table from its first field on, the encoding hint never visible, and an error
inside the hold's MULTI/EXEC still raised: against a real Redis (both backends).

A batch of small items (256 entries, values under 64 bytes) would otherwise be kept in Redis' small-hash
encoding, where holding and releasing a batch costs O(batch²) (core.held's docstring)."""

from __future__ import annotations

import pytest
import redis

from services.core import Keys, Settings, StreamConsumer, WorkItem
from services.core.held import WIDE
from services.core.stage import Commit


def _batch(client: redis.Redis, settings: Settings, n: int) -> tuple[StreamConsumer, list]:  # type: ignore[type-arg]
    c = StreamConsumer(client, settings, stage="work", input_stream="in", consumer="c1")
    stream = Keys(settings.pipeline).stream("in")
    for i in range(n):
        client.xadd(stream, WorkItem(id=f"i{i}").encode())
    return c, c.read(count=n)


@pytest.mark.parametrize("how", ["hold", "send_hold"])
def test_a_batch_of_small_items_is_held_as_a_hash_table_and_released_whole(client: redis.Redis, settings: Settings,
                                                                          how: str) -> None:
    c, batch = _batch(client, settings, 256)
    assert len(batch) == 256 and max(len(d.raw) for d in batch) < 64
    if how == "hold":
        c.held.hold(c, batch)
    else:
        reply = c.held.send_hold(c, batch, running=False)
        assert reply is not None
        reply.wait()
    assert client.object("encoding", c.held.key) == b"hashtable"
    assert not client.hexists(c.held.key, WIDE)
    assert client.hgetall(c.held.key) == {d.entry_id: d.raw for d in batch}  # exactly the items, nothing else
    commit = Commit()
    commit.record_many(batch, b"{}")
    c.commit(commit)
    assert not client.exists(c.held.key)


def test_an_error_inside_the_holds_transaction_is_raised(client: redis.Redis, settings: Settings) -> None:
    c, batch = _batch(client, settings, 3)
    client.set(c.held.key, "not a hash")  # a foreign writer: HSET fails inside EXEC (WRONGTYPE)
    reply = c.held.send_hold(c, batch, running=False)
    assert reply is not None
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        reply.wait()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        c.held.hold(c, batch)
    assert client.get(c.held.key) == b"not a hash"
