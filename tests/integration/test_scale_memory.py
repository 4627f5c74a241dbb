"""Redis memory stays bounded by work in flight (issue 11, part 6; the long run is `python -m bench.scale`).

Three real stream-executor stages (s1 -> s2 -> s3, in-process `noop` workers in threads) on a redis-server of the
test's own (used_memory is per server), fed by the manager's real Dispatcher with at most IN_FLIGHT items in flight.
Every sample of used_memory must stay below bench.scale_check's bound (base + per-item bookkeeping + entry bytes x
(in flight + trim slack)); the same run with trimming disabled must break that bound, so the check can fail.

And the dead-letter cap (core.trim.DeadLetterCap): a stage dead-lettering more than its cap keeps about the cap,
counts every dropped dead letter exactly, logs it, and keeps the dropped items `dead`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.scale_check import Sampler, entry_bytes, memory_bound
from services.core import DEAD, Keys, Progress, Settings
from services.core.embedded import EmbeddedRedis
from services.core.rewind import create_group
from services.core.spec import Pipeline
from services.core.trim import SafeTrim, dropped_dead_letters
from services.manager.diff import Dispatcher
from services.workers import run_worker, worker

N_ITEMS = 10_000
N_UNTRIMMED = 20_000  # the run without trimming dispatches at least this many items ...
UNTRIMMED_S = 6.0  # ... and for at least this long: the slack is SLACK_S of throughput, so a run 4 x SLACK_S long
# keeps ~4 x the slack in its streams however fast the stages are (at 9k items/s, 20k items alone took 2.2 s and
# stayed within the bound)
IN_FLIGHT = 600  # the producer waits while more than this many items are dispatched and not done
PAGE = 300
CLIENTS = 256 * 1024  # the test's allowance for client buffers (its pages are small)
# Seconds of throughput per stream allowed acknowledged-but-untrimmed (each consumer trims once a second). Tighter
# than the bench's 3 s so that, even at a few thousand items/s, the 3 x N_ITEMS entries an untrimmed run keeps
# outgrow the allowance.
SLACK_S = 1.5
STAGES = ("s1", "s2", "s3")


@worker("scale-test-fails", writes=False)
def always_fails(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    raise RuntimeError("poison on purpose")


def make_pipeline(name: str, stages: dict[str, Any]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": stages})


@contextmanager
def own_redis(tmp: Path) -> Iterator[redis.Redis]:
    server = EmbeddedRedis(tmp / "redis", persist=False)
    url = server.start()
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


@contextmanager
def workers(pipeline: Pipeline, settings: Settings, stages: tuple[str, ...]) -> Iterator[None]:
    stop, errors = threading.Event(), []

    def target(stage: str) -> None:
        try:
            run_worker(pipeline, stage, settings, stop)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(s,), daemon=True) for s in stages]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors


def run_three_stages(client: redis.Redis, tmp: Path, name: str, n: int, min_s: float = 0.0) -> dict[str, Any]:
    """Dispatch n items, and keep dispatching pages until min_s seconds have passed; judge memory_bound."""
    url = client.connection_pool.connection_kwargs
    settings = Settings(redis_url=f"redis://{url['host']}:{url['port']}/0", pipeline=name, data_dir=tmp / "data",
                        out_dir=tmp / "out", block_ms=50, visibility_timeout_ms=30_000)
    pipeline = make_pipeline(name, {
        "s1": {"work": {"input": "source", "worker": "noop", "executor": "stream"}},
        "s2": {"work": {"input": "s1", "worker": "noop", "executor": "stream"}},
        "s3": {"work": {"input": "s2", "worker": "noop", "executor": "stream"}}})
    keys = Keys(name)
    for stage, stream in zip(STAGES, ("source", "s1", "s2"), strict=True):
        create_group(client, keys, keys.stream(stream), stage)  # as the manager's ensure_groups
    per_entry = entry_bytes(client, keys)
    base = int(client.info("memory")["used_memory"])
    sampler = Sampler(client, keys, [keys.stream(s) for s in ("source", "s1", "s2")], None, base, per_entry)
    dispatcher = Dispatcher(client, keys, Progress(client, keys), batch="b")
    with workers(pipeline, settings, STAGES):
        started, first = time.monotonic(), 0
        while first < n or time.monotonic() - started < min_s:
            deadline = time.monotonic() + 60
            while sampler.sample().in_flight > IN_FLIGHT:
                assert time.monotonic() < deadline, "the stages stopped making progress"
                time.sleep(0.02)
            last = min(n, first + PAGE) if first < n else first + PAGE
            dispatcher.dispatch([{"name": f"item-{i:08d}", "version": "1"} for i in range(first, last)])
            first = last
        n = first
        sampler.run_until_done(n, 0.05, timeout=120)
        time.sleep(1.5)  # every consumer trims once a second: the last batches' entries go too
        sampler.sample()
    return memory_bound(client, keys, base, per_entry, sampler, n, clients=CLIENTS, slack_s=SLACK_S)


@pytest.mark.one_backend
def test_used_memory_stays_bounded_by_in_flight_work(tmp_path: Path) -> None:
    with own_redis(tmp_path) as client:
        out = run_three_stages(client, tmp_path, "scale-mem", N_ITEMS)
    # 3 streams x N_ITEMS entries would be kept without trimming; in flight never exceeds about IN_FLIGHT + a page
    assert out["peak_in_flight"] <= IN_FLIGHT + PAGE
    assert out["peak_stream_entries"] <= out["peak_in_flight"] + out["slack_entries"], out
    assert out["within_bound"], out


@pytest.mark.one_backend
def test_the_bound_fails_when_acknowledged_entries_are_not_trimmed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SafeTrim, "__call__", lambda self, stream_key: 0)
    with own_redis(tmp_path) as client:
        out = run_three_stages(client, tmp_path, "scale-notrim", N_UNTRIMMED, min_s=UNTRIMMED_S)
    assert out["peak_stream_entries"] >= 3 * N_UNTRIMMED  # nothing trimmed: every entry of every stream is kept
    assert not out["within_bound"], out


@pytest.mark.one_backend
def test_dead_letters_beyond_the_cap_are_dropped_counted_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n, cap = 600, 150
    with own_redis(tmp_path) as client:
        url = client.connection_pool.connection_kwargs
        name = "scale-dlq"
        settings = Settings(redis_url=f"redis://{url['host']}:{url['port']}/0", pipeline=name,
                            data_dir=tmp_path / "data", out_dir=tmp_path / "out", block_ms=50, max_deliveries=1,
                            dead_letter_maxlen=cap)
        pipeline = make_pipeline(name, {"bad": {"work": {"input": "source", "worker": "scale-test-fails",
                                                         "executor": "stream", "max_deliveries": 1}}})
        keys = Keys(name)
        create_group(client, keys, keys.stream("source"), "bad")
        progress = Progress(client, keys)
        with caplog.at_level(logging.WARNING, logger="services.core.trim"), workers(pipeline, settings, ("bad",)):
            Dispatcher(client, keys, progress, batch="b").dispatch([{"name": f"p-{i}"} for i in range(n)])
            deadline = time.monotonic() + 60
            while progress.counts()[DEAD] < n or client.xlen(keys.dead_letters("bad")) > cap + 100:
                assert time.monotonic() < deadline, (progress.counts(), client.xlen(keys.dead_letters("bad")))
                time.sleep(0.05)
        kept = int(client.xlen(keys.dead_letters("bad")))
        dropped = dropped_dead_letters(client, keys)
        states = client.hgetall(keys.states())
    assert cap <= kept <= cap + 100  # MAXLEN ~: whole stream nodes (100 entries by default) go
    assert dropped == {"bad": n - kept}  # every dead letter is either kept or counted: none lost silently
    assert sum(1 for v in states.values() if v == DEAD.encode()) == n  # dropped ones stay dead
    logged = [r for r in caplog.records if getattr(r, "event", None) == "dlq.dropped"]
    assert logged and sum(r.dropped for r in logged) == n - kept
