"""Retries wait with exponential backoff and jitter (services/core/retry.py), against real Redis.

A failed delivery is acknowledged into the stage's retry set in the commit's own MULTI (never on the stream
before it is due), is moved back by one script exactly once however many movers race, keeps its delivery count,
shows as `failed`/`retrying` while it waits, and the schedule and its spec field behave as documented. The process
executor retries through the same set (the stream worker: tests/integration/test_retry_outage.py)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import redis

from services.core import FAILED, Commit, Keys, Progress, Settings, StreamConsumer, WorkItem, list_dead_letters
from services.core.guard import CommitError
from services.core.retry import RetryQueue, RetrySpec, retry_key, retry_policy
from services.core.spec import Pipeline, SpecError, load_pipeline
from services.manager.executors import StageContext, executor_class, stage_settings
from services.manager.report import status

FAST = RetrySpec(backoff=0.4, multiplier=2, jitter=0)


def _consumer(client: redis.Redis, settings: Settings, name: str = "c1", retry: RetrySpec | None = FAST
              ) -> StreamConsumer:
    return StreamConsumer(client, settings, stage="work", input_stream="in", consumer=name, retry=retry)


def _add(client: redis.Redis, settings: Settings, *ids: str) -> None:
    keys = Keys(settings.pipeline)
    for i in ids:
        client.xadd(keys.stream("in"), WorkItem(id=i, batch="b1").encode())


def test_the_schedule_grows_is_capped_and_jitter_only_shortens() -> None:
    spec = RetrySpec(backoff=1, multiplier=3, max_backoff=5, jitter=0.5)
    rng = random.Random(7)
    for n, nominal in ((1, 1), (2, 3), (3, 5), (40, 5), (10_000, 5)):
        waits = [spec.delay(n, rng) for _ in range(200)]
        assert all(nominal * 0.5 <= w <= nominal for w in waits), (n, min(waits), max(waits))
        assert max(waits) - min(waits) > nominal * 0.3, "jitter spreads the waits"
    assert RetrySpec(backoff=0).delay(3) == 0


def test_defaults_survive_a_three_second_outage_with_three_deliveries() -> None:
    spec = RetrySpec()
    shortest = min(spec.delay(1, random.Random(s)) + spec.delay(2, random.Random(s + 1)) for s in range(500))
    assert shortest >= 4.5 * 0.999, "deliveries 1 and 3 are at least 4.5 s apart: a 3 s outage is ridden out"


def test_retry_spec_in_defaults_and_per_stage(tmp_path: Path) -> None:
    spec = {"apiVersion": "batchmesh/v1", "name": "r", "source": {"path": "."},
            "defaults": {"retry": {"backoff": "500ms", "max_backoff": "1m", "jitter": 0}},
            "stages": {"a": {"work": {"input": "source", "command": ["true"], "retry": {"multiplier": 3}}},
                       "b": {"work": {"input": "a", "command": ["true"]}}}}
    pipeline = Pipeline.model_validate(spec)
    a, b = retry_policy(pipeline, "a"), retry_policy(pipeline, "b")
    assert (a.backoff, a.max_backoff, a.multiplier, a.jitter) == (0.5, 60, 3, 0), "the stage overrides one field"
    assert (b.backoff, b.multiplier) == (0.5, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: batchmesh/v1\nname: r\nsource: {path: .}\n"
                   "defaults: {retry: {backoff: soon, jitter: 1.5}}\n"
                   "stages:\n  a: {work: {input: source, command: [x], retry: {multiplyer: 2}}}\n")
    with pytest.raises(SpecError) as err:
        load_pipeline(bad)
    paths = [p for p, _ in err.value.errors]
    assert paths == ["defaults.retry.backoff", "defaults.retry.jitter", "stages.a.work.retry.multiplyer"], paths


def test_a_failed_item_waits_in_the_retry_set_then_comes_back_once(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    _add(client, settings, "x")
    c = _consumer(client, settings)
    (d,) = c.read()
    commit = Commit()
    commit.fail(d, "downstream unavailable")
    began = time.monotonic()
    c.commit(commit)
    assert client.xpending(keys.stream("in"), "work")["pending"] == 0, "acknowledged in the commit"
    assert client.zcard(retry_key(keys, "work")) == 1
    assert Progress(client, keys).state_of("x") == FAILED
    back = []
    while not back and time.monotonic() - began < 30:
        back = c.read(block_ms=50)
    waited = time.monotonic() - began
    assert [b.item.id for b in back if b.item] == ["x"] and waited >= 0.4 * 0.95, waited
    assert back[0].deliveries == 2 and back[0].item is not None and back[0].item.error == "downstream unavailable"
    assert client.zcard(retry_key(keys, "work")) == 0
    assert c.read(block_ms=600) == [], "moved once"


def test_movers_racing_move_each_retry_exactly_once(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    queue = RetryQueue(client, keys, "work", keys.stream("in"))
    pipe = client.pipeline(transaction=True)
    for i in range(2000):
        queue.schedule(pipe, WorkItem(id=f"i{i}", attempts=1).encode()[b"item"], 0.05)
    pipe.execute()
    time.sleep(0.1)
    movers = [RetryQueue(client, keys, "work", keys.stream("in")) for _ in range(4)]  # a connection each
    threads = [threading.Thread(target=lambda m=m: [m.move_due(limit=37) for _ in range(80)]) for m in movers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [WorkItem.decode(f).id for _, f in client.xrange(keys.stream("in"))]
    assert len(ids) == 2000 and len(set(ids)) == 2000, (len(ids), len(set(ids)))
    assert int(client.hget(keys.arrivals(), keys.stream("in"))) == 2000


def test_a_commit_that_cannot_schedule_writes_nothing(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    _add(client, settings, "y")
    c = _consumer(client, settings)
    (d,) = c.read()
    client.set(retry_key(keys, "work"), "not a sorted set")  # a foreign writer: the commit must fail whole
    commit = Commit()
    commit.fail(d, "boom")
    with pytest.raises(CommitError):
        c.commit(commit)
    assert client.xpending(keys.stream("in"), "work")["pending"] == 1, "still pending: reclaimed later, not lost"


def test_retries_use_up_max_deliveries_then_dead_letter(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    _add(client, settings, "z")
    c = _consumer(client, settings, retry=RetrySpec(backoff=0.05, jitter=0))
    deadline = time.monotonic() + 10
    while not list_dead_letters(client, keys, "work") and time.monotonic() < deadline:
        commit = Commit()
        for d in c.read(block_ms=50):
            commit.fail(d, f"attempt {d.deliveries}")
        c.commit(commit)
    (letter,) = list_dead_letters(client, keys, "work")
    assert letter.deliveries == 3 and letter.reason == "attempt 3"


def test_status_counts_retrying_and_the_batch_is_not_done_meanwhile(client: redis.Redis, settings: Settings) -> None:
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": settings.pipeline,
                                        "source": {"path": "."},
                                        "stages": {"work": {"work": {"input": "in", "command": ["true"]}}}})
    pipeline.stages["work"].body.input = "in"
    keys = Keys(settings.pipeline)
    client.hset(keys.batch(), mapping={"id": "b1", "complete": 1, "listed": 1})
    _add(client, settings, "w")
    c = _consumer(client, settings, retry=RetrySpec(backoff=30))
    (d,) = c.read()
    commit = Commit()
    commit.fail(d, "later")
    c.commit(commit)
    client.hset(keys.counts(), FAILED, 0)  # not counted failed: only the retry set holds it back
    snap = status(client, pipeline)
    assert snap["stages"]["work"]["retrying"] == 1 and snap["stages"]["work"]["backlog"] == 0
    assert snap["batch_done"] is False


def test_the_process_executor_retries_through_the_retry_set(client: redis.Redis, settings: Settings,
                                                            tmp_path: Path) -> None:
    flag = tmp_path / "down"
    flag.write_text("")
    command = ["sh", "-c", f'if [ -e {flag} ]; then echo down >&2; exit 3; fi; echo "{{}}"']
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": settings.pipeline, "source": {"path": "."},
        "defaults": {"retry": {"backoff": "600ms", "jitter": 0}},
        "stages": {"w": {"work": {"input": "source", "command": command, "executor": "process"}}}})
    keys = Keys(settings.pipeline)
    ctx = StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings.model_copy(
        update={"out_dir": tmp_path / "out"})))
    executor = executor_class("process")(ctx)
    executor.start()
    try:
        client.xadd(keys.stream("source"), WorkItem(id="p", batch="b").encode())
        deadline = time.monotonic() + 10
        while not client.zcard(retry_key(keys, "w")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.zcard(retry_key(keys, "w")) == 1, "the failure waits in the retry set"
        flag.unlink()
        while not client.hget(keys.results(), "p") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.hget(keys.results(), "p") is not None
        assert list_dead_letters(client, keys, "w") == []
    finally:
        executor.stop(10)
