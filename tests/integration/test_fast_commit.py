"""The one-script commit (core.fast_commit) against a real Redis: the same effects as the MULTI path, refusals
that write nothing, a value-level failure reported as partial, the read ahead in the same round trip, and a
script missing from Redis (NOSCRIPT) run once all the same, its read kept."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from services.core import CommitError, Keys, Progress, Settings, StreamConsumer, WorkItem
from services.core.stage import Commit


def consumer(client: redis.Redis, settings: Settings) -> StreamConsumer:
    return StreamConsumer(client, settings, stage="work", input_stream="in", consumer="c1")


def add(client: redis.Redis, settings: Settings, *ids: str) -> None:
    for item_id in ids:
        client.xadd(Keys(settings.pipeline).stream("in"), WorkItem(id=item_id, data={"n": item_id}).encode())


def record_all(c: StreamConsumer, batch: list, result: bytes = b"{}") -> Commit:  # type: ignore[type-arg]
    commit = Commit()
    for d in batch:
        commit.record(d, result)
    commit.stats.append(("timed", len(batch)))
    return commit


def test_a_sink_commit_records_acks_marks_done_and_reads_the_next_batch(client: redis.Redis,
                                                                       settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    Progress(client, keys).mark(["a", "b", "c", "d"], "queued")
    add(client, settings, "a", "b")
    batch = c.read(count=2)
    add(client, settings, "c", "d")
    c.held.hold(c, batch)
    c.read_next = 10
    c.commit(record_all(c, batch, b'{"x":1}'))
    assert c.has_read_ahead() and c.read_next == 0
    ahead = c.read()
    assert [d.item.id for d in ahead if d.item] == ["c", "d"]
    assert client.hgetall(keys.results()) == {b"a": b'{"x":1}', b"b": b'{"x":1}'}
    assert Progress(client, keys).counts()["done"] == 2 and Progress(client, keys).counts()["queued"] == 2
    assert client.hlen(c.held.key) == 0
    stats = client.hgetall(keys.stage_stats("work"))
    assert stats[b"out"] == b"2" and stats[b"timed"] == b"2"
    rows = client.xpending_range(c.stream_key, c.group, min="-", max="+", count=10)
    assert [r["message_id"] for r in rows] == [d.entry_id for d in ahead]  # only the batch read ahead is pending
    c.commit(record_all(c, ahead))
    assert not c.has_read_ahead()  # no read asked: none made
    assert client.xpending(c.stream_key, c.group)["pending"] == 0
    assert Progress(client, keys).counts()["done"] == 4


def test_a_key_of_the_wrong_type_refuses_the_whole_commit_and_reads_nothing(client: redis.Redis,
                                                                             settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a", "b")
    (first,) = c.read(count=1)
    client.set(keys.results(), "not a hash")  # a foreign writer
    c.read_next = 10
    with pytest.raises(CommitError, match="holds a string, not a hash") as caught:
        c.commit(record_all(c, [first]))
    assert caught.value.partial is False
    rows = client.xpending_range(c.stream_key, c.group, min="-", max="+", count=10)
    assert first.entry_id in [r["message_id"] for r in rows], "nothing acknowledged: reclaimed later, not lost"
    assert {r["consumer"] for r in rows} == {b"c1"} and len(rows) == 2  # and the entry read ahead
    assert [d.item.id for d in c.read() if d.item] == ["b"]  # which the next read returns
    assert not client.exists(keys.stage_stats("work")) and client.hget(keys.states(), "a") is None


def test_a_value_level_failure_is_partial_and_stops_the_read_ahead(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a", "b")
    (first,) = c.read(count=1)
    client.hset(keys.stage_stats("work"), "out", "many")  # HINCRBY fails on it; the rest applies (as in MULTI)
    c.read_next = 10
    with pytest.raises(CommitError, match="partially applied") as caught:
        c.commit(record_all(c, [first]))
    assert caught.value.partial is True
    rows = client.xpending_range(c.stream_key, c.group, min="-", max="+", count=10)
    assert first.entry_id not in [r["message_id"] for r in rows], "the rest of the commit applied: acknowledged"
    assert client.hget(keys.results(), "a") == b"{}"


def test_a_script_flushed_from_redis_still_commits_exactly_once(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a", "b")
    (first,) = c.read(count=1)
    client.script_flush()
    c.read_next = 5
    c.commit(record_all(c, [first]))
    ahead = c.read()
    assert [d.item.id for d in ahead if d.item] == ["b"]
    assert client.hget(keys.stage_stats("work"), "out") == b"1"
    assert Progress(client, keys).counts()["done"] == 1


def test_a_vanished_group_is_raised_as_nogroup_for_the_loop_and_nothing_is_written(client: redis.Redis,
                                                                                  settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a")
    (first,) = c.read(count=1)
    client.xgroup_destroy(c.stream_key, c.group)  # a Redis restored without its groups (core.rewind)
    commit = Commit()
    commit.complete(first, ("work", WorkItem(id="a")))  # publishes to another stage: the stale check runs
    with pytest.raises(redis.ResponseError, match="NOGROUP"):  # as the MULTI path's check raises it
        c.commit(commit)
    assert client.xlen(keys.stream("work")) == 0 and not client.exists(keys.stage_stats("work"))


def test_a_worker_stopped_with_a_batch_read_ahead_finishes_it(client: redis.Redis, settings: Settings,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (the stop event) right after a commit that read ahead: that batch is processed and committed
    before the worker leaves, never left pending."""
    from services.core.spec import Pipeline
    from services.workers import run_worker

    keys = Keys(settings.pipeline)
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": settings.pipeline,
                                        "source": {"path": "."},
                                        "stages": {"work": {"work": {"input": "source", "worker": "noop"}}}})
    stop, read_ahead = threading.Event(), []
    real = StreamConsumer.commit

    def stop_after_reading_ahead(self: StreamConsumer, commit: Commit) -> None:
        asked = self.read_next
        real(self, commit)
        if asked and self.has_read_ahead() and not read_ahead:
            read_ahead.append(asked)
            stop.set()

    monkeypatch.setattr(StreamConsumer, "commit", stop_after_reading_ahead)
    client.xgroup_create(keys.stream("source"), "work", id="0", mkstream=True)
    for i in range(5):
        client.xadd(keys.stream("source"), WorkItem(id=f"i{i}").encode())
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out"})
    thread = threading.Thread(target=run_worker, args=(pipeline, "work", cfg, stop), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive() and read_ahead
    assert client.xpending(keys.stream("source"), "work")["pending"] == 0  # the batch read ahead was committed
    finished = 1 + read_ahead[0]  # the first batch (one item: its time is not known yet) and the one read ahead
    assert client.hlen(keys.results()) == finished and Progress(client, keys).counts()["done"] == finished
