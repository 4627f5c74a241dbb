"""A pending entry deleted from the stream (XDEL, an outside MAXLEN) while its consumer was dead (issue 11): the
reclaim that finds it gone takes the item from the held index (services/core/held.py) and fails it with the
reason "entry lost": retried while deliveries remain, else dead-lettered — noted in the batch's dead set, so a
barrier stops waiting — and the item is never left `running`. On both Redis versions: 6.2 returns the entry as
nil, 7 lists its id apart."""

from __future__ import annotations

import time

import redis

from services.core import (
    DEAD,
    FAILED,
    RUNNING,
    Commit,
    Keys,
    Progress,
    Settings,
    StreamConsumer,
    WorkItem,
    list_dead_letters,
)
from services.core.retry import RetrySpec, retry_key


def _consumer(client: redis.Redis, settings: Settings, name: str) -> StreamConsumer:
    return StreamConsumer(client, settings, stage="work", input_stream="in", consumer=name,
                          retry=RetrySpec(backoff=0.05, jitter=0))


def _lose_one(client: redis.Redis, settings: Settings, attempts: int = 0) -> tuple[StreamConsumer, bytes]:
    """Consumer `dead` takes a and b in hand and dies; a's entry is deleted. Returns a rescuer and a's entry id."""
    keys = Keys(settings.pipeline)
    for name in ("a", "b"):
        client.xadd(keys.stream("in"), WorkItem(id=name, batch="b1", data={"n": name}, attempts=attempts).encode())
    dead = _consumer(client, settings, "dead")
    batch = dead.read()
    dead.held.hold(dead, batch)
    assert Progress(client, keys).state_of("a") == RUNNING
    lost = next(d.entry_id for d in batch if d.item and d.item.id == "a")
    client.xdel(keys.stream("in"), lost)
    time.sleep(settings.visibility_timeout_ms / 1000 + 0.05)
    return _consumer(client, settings, "rescuer"), lost


def test_a_lost_entry_s_item_is_put_back_and_finishes(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    rescuer, _ = _lose_one(client, settings)
    reclaimed = rescuer.reclaim()
    assert [d.item.id for d in reclaimed if d.item] == ["b"], "b is reclaimed as usual"
    assert Progress(client, keys).state_of("a") == FAILED, "a waits for its retry, no longer 'running'"
    assert client.zcard(retry_key(keys, "work")) == 1
    commit = Commit()
    for d in reclaimed:
        commit.record(d, b"{}")
    rescuer.commit(commit)
    deadline, back = time.monotonic() + 30, []
    while not back and time.monotonic() < deadline:
        back = [d for d in rescuer.read(block_ms=50) if d.item]
    (d,) = back
    assert d.item is not None and d.item.id == "a" and d.item.data == {"n": "a"}
    assert "entry lost" in (d.item.error or "")
    commit = Commit()
    commit.record(d, b"{}")
    rescuer.commit(commit)
    assert sorted(k.decode() for k in client.hkeys(keys.results())) == ["a", "b"]
    assert client.hlen(f"{keys.prefix}:held:work") == 0, "the held index keeps nothing once committed"


def test_a_lost_entry_without_deliveries_left_is_dead_lettered_with_the_reason(client: redis.Redis,
                                                                              settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    rescuer, _ = _lose_one(client, settings, attempts=2)  # its third delivery was the one lost
    rescuer.reclaim()
    (letter,) = [d for d in list_dead_letters(client, keys, "work") if d.item_id == "a"]
    assert letter.reason.startswith("entry lost"), letter.reason
    assert Progress(client, keys).state_of("a") == DEAD
    assert client.sismember(keys.batch_dead("b1", "work"), "a"), "a barrier downstream stops waiting for it"


def test_an_orphan_of_a_lost_entry_is_swept_back(client: redis.Redis, settings: Settings) -> None:
    """Redis 7 drops a deleted entry from the pending list in the reclaim itself: a consumer dying right after that
    leaves the item only in the held index. The sweep requeues it (here XDEL + XACK stand for that reclaim)."""
    keys = Keys(settings.pipeline)
    rescuer, lost = _lose_one(client, settings)
    client.xack(keys.stream("in"), "work", lost)  # what XAUTOCLAIM did before its consumer died
    assert rescuer.held.sweep(keys.stream("in"), "work", min_age_s=0.2) == 0, "first sighting: only noted"
    time.sleep(0.25)
    assert rescuer.held.sweep(keys.stream("in"), "work", min_age_s=0.2) == 1
    assert rescuer.held.sweep(keys.stream("in"), "work", min_age_s=0.2) == 0, "once"
    deadline, back = time.monotonic() + 30, []
    while "a" not in back and time.monotonic() < deadline:
        back += [d.item.id for d in rescuer.read(block_ms=50) if d.item]
    assert back.count("a") == 1, back
    assert client.hexists(f"{keys.prefix}:held:work", lost) == 0
