"""Reclaiming entries from crashed consumers: XAUTOCLAIM past the visibility timeout, its cursor kept across calls,
entries deleted while pending acknowledged and counted lost, and the delivery cap dead-lettering poison items."""

from __future__ import annotations

import logging
import time

import pytest
import redis
from prometheus_client import REGISTRY

from services.core import DEAD, Keys, Progress, Settings, StreamConsumer, WorkItem, list_dead_letters


def consumer(client: redis.Redis, settings: Settings, name: str) -> StreamConsumer:
    return StreamConsumer(client, settings, stage="work", input_stream="in", consumer=name)


def add(client: redis.Redis, settings: Settings, *ids: str) -> list[bytes]:
    stream = Keys(settings.pipeline).stream("in")
    return [client.xadd(stream, WorkItem(id=i).encode()) for i in ids]


def idle(settings: Settings) -> None:
    time.sleep(settings.visibility_timeout_ms / 1000 + 0.05)


def owners(client: redis.Redis, c: StreamConsumer) -> dict[bytes, bytes]:
    rows = client.xpending_range(c.stream_key, c.group, min="-", max="+", count=1000)
    return {r["message_id"]: r["consumer"] for r in rows}


def lost_total(settings: Settings) -> float:
    labels = {"pipeline": settings.pipeline, "stage": "work"}
    return REGISTRY.get_sample_value("batchmesh_items_lost_total", labels) or 0.0


def test_idle_entries_are_reclaimed_by_another_consumer(client: redis.Redis, settings: Settings) -> None:
    crashed, rescuer = consumer(client, settings, "crashed"), consumer(client, settings, "rescuer")
    ids = add(client, settings, "a", "b")
    assert len(crashed.read()) == 2
    assert rescuer.reclaim() == [], "not idle long enough yet"
    idle(settings)
    batch = rescuer.reclaim()
    assert [d.entry_id for d in batch] == ids
    assert [d.deliveries for d in batch] == [2, 2]
    assert set(owners(client, rescuer).values()) == {b"rescuer"}


def test_the_cursor_is_kept_across_calls(client: redis.Redis, settings: Settings) -> None:
    crashed, rescuer = consumer(client, settings, "crashed"), consumer(client, settings, "rescuer")
    ids = add(client, settings, *"abcde")
    crashed.read()
    idle(settings)
    calls = [rescuer.reclaim(count=2) for _ in range(3)]
    assert [len(batch) for batch in calls] == [2, 2, 1]
    assert [d.entry_id for batch in calls for d in batch] == ids, "each entry once, in order"
    assert rescuer._reclaim_cursor == b"0-0"


def test_an_empty_claim_with_a_nonzero_cursor_goes_on_at_the_next_read(
    client: redis.Redis, settings: Settings
) -> None:
    """XAUTOCLAIM scans at most 10 x COUNT pending entries: a call can claim nothing yet stop part-way."""
    crashed, rescuer = consumer(client, settings, "crashed"), consumer(client, settings, "rescuer")
    ids = add(client, settings, *[f"i{n}" for n in range(30)])
    crashed.read(count=30)
    idle(settings)
    client.xclaim(crashed.stream_key, "work", "crashed", 0, ids[:25], justid=True)  # the head is busy again
    assert rescuer.read(count=2, block_ms=0) == []
    assert rescuer._reclaim_cursor != b"0-0"
    got = [d.entry_id for _ in range(3) for d in rescuer.read(count=2, block_ms=0)]
    assert got[:2] == ids[25:27], "the scan resumed at once, not a half visibility timeout later"


def test_an_entry_deleted_while_pending_is_acknowledged_and_counted_lost(
    client: redis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 6.2 returns the deleted entry as nil (the consumer acknowledges it), 7.0 drops it from the pending
    list and returns its id apart: the same outcome either way."""
    crashed, rescuer = consumer(client, settings, "crashed"), consumer(client, settings, "rescuer")
    ids = add(client, settings, "a", "b", "c")
    crashed.read()
    client.xdel(crashed.stream_key, ids[1])
    idle(settings)
    before = lost_total(settings)
    with caplog.at_level(logging.WARNING, logger="services.core.stage"):
        batch = rescuer.reclaim()
    assert [d.entry_id for d in batch] == [ids[0], ids[2]]
    assert lost_total(settings) == before + 1
    assert [(r.event, r.count) for r in caplog.records if getattr(r, "event", "") == "stage.lost"] == [
        ("stage.lost", 1)]
    assert set(owners(client, rescuer)) == {ids[0], ids[2]}, "the deleted entry is no longer pending"
    idle(settings)
    assert [d.entry_id for d in rescuer.reclaim()] == [ids[0], ids[2]], "no loop on the deleted entry"
    assert lost_total(settings) == before + 1


def test_a_claim_of_only_deleted_entries_returns_nothing(client: redis.Redis, settings: Settings) -> None:
    crashed, rescuer = consumer(client, settings, "crashed"), consumer(client, settings, "rescuer")
    ids = add(client, settings, "a", "b")
    crashed.read()
    client.xdel(crashed.stream_key, *ids)
    idle(settings)
    assert rescuer.reclaim() == []
    assert client.xpending(crashed.stream_key, "work")["pending"] == 0


def test_past_the_delivery_cap_an_entry_is_dead_lettered(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    add(client, settings, "poison")
    assert [d.deliveries for d in consumer(client, settings, "c1").read()] == [1]
    for n, name in enumerate(["c2", "c3"], start=2):  # each consumer "dies" holding it
        idle(settings)
        assert [d.deliveries for d in consumer(client, settings, name).reclaim()] == [n]
    idle(settings)
    assert consumer(client, settings, "c4").reclaim() == [], "the 4th delivery is over the cap of 3"
    (letter,) = list_dead_letters(client, keys, "work")
    assert letter.item_id == "poison" and letter.deliveries == 4
    assert "delivered 3 times" in letter.reason
    assert client.xpending(keys.stream("in"), "work")["pending"] == 0
    assert Progress(client, keys).state_of("poison") == DEAD


def test_failed_attempts_count_toward_the_delivery_cap(client: redis.Redis, settings: Settings) -> None:
    stream = Keys(settings.pipeline).stream("in")
    client.xadd(stream, WorkItem(id="x", attempts=2, error="boom").encode())
    assert [d.deliveries for d in consumer(client, settings, "c1").read()] == [3]
    idle(settings)
    assert consumer(client, settings, "c2").reclaim() == []
    assert list_dead_letters(client, Keys(settings.pipeline), "work")[0].deliveries == 4
