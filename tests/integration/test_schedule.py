"""Scheduling against real Redis: cron ticks start batches and never overlap a running one (one manager of
several takes each tick), a pipeline runs after another pipeline's batch completes (a real join's event), and the
cursor into those events survives a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis
from test_manager_diff import wait_for

from services.core import Keys, Settings
from services.core.spec import Pipeline
from services.manager import run_manager
from services.manager.schedule import BATCH, POLL, SKIPPED, Schedule
from services.router import run_barrier


def pipeline(name: str, schedule: dict[str, Any] | None = None, path: str = ".", **stages: Any) -> Pipeline:
    return Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"path": path, "poll": 0.2},
        **({"schedule": schedule} if schedule else {}),
        "stages": stages or {"work": {"work": {"input": "source", "worker": "noop"}}}})


def wait_due(schedule: Schedule, timeout: float = 10.0) -> str | None:
    """The first thing due within `timeout` s, else None (a positive wait: its deadline only costs on failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if due := schedule.due():
            return due
        time.sleep(0.02)
    return None


def test_default_schedule_lists_at_start_then_every_poll(client: redis.Redis, pipeline_name: str) -> None:
    schedule = Schedule(client, pipeline(pipeline_name), lambda: False)
    before = time.time()
    assert schedule.due() == BATCH  # the first listing is a batch even with nothing new
    assert schedule.due() is None
    wait, since = schedule.wait_s(), time.time() - before
    assert 0.2 - since <= wait <= 0.2, (wait, since)  # the poll (0.2 s) after the first listing, less the time spent
    assert wait_due(schedule) == POLL


def test_cron_starts_a_batch_per_tick_and_skips_ticks_while_a_batch_runs(client: redis.Redis,
                                                                       pipeline_name: str) -> None:
    running = threading.Event()
    spec = pipeline(pipeline_name, {"cron": "* * * * * *"})  # every second (6 fields: seconds last)
    schedule = Schedule(client, spec, running.is_set)
    assert schedule.due() == BATCH
    assert wait_due(schedule) == BATCH  # the next tick
    running.set()
    skipped = SKIPPED.labels(pipeline_name)._value.get()
    assert wait_due(schedule, timeout=2.5) is None  # ticks come and are skipped: no overlap
    assert SKIPPED.labels(pipeline_name)._value.get() >= skipped + 1
    running.clear()
    assert wait_due(schedule) == BATCH


def test_cron_tick_is_taken_by_one_manager_of_two(client: redis.Redis, pipeline_name: str) -> None:
    spec = pipeline(pipeline_name, {"cron": "* * * * * *"})
    a, b = Schedule(client, spec, lambda: False), Schedule(client, spec, lambda: False)
    assert a.due() == b.due() == BATCH  # both start once at start (each manager's own first listing)
    time.sleep(max(a.wait_s(), b.wait_s()) + 0.05)  # both past the same tick
    assert sorted(str(x.due()) for x in (a, b)) == ["None", BATCH]


def test_after_another_pipeline_starts_once_per_event_even_across_a_restart(client: redis.Redis,
                                                                            pipeline_name: str) -> None:
    upstream = f"{pipeline_name}-up"
    events = Keys(upstream).events()
    client.xadd(events, {"event": '{"stage": "done", "batch": "old"}'})  # before we existed: not ours
    running = threading.Event()
    spec = pipeline(pipeline_name, {"after": {"pipeline": upstream, "stage": "done"}})
    schedule = Schedule(client, spec, running.is_set)
    assert schedule.due() == BATCH  # at start
    assert wait_due(schedule, timeout=1.5) is None
    client.xadd(events, {"event": '{"stage": "other", "batch": "b1"}'})  # another barrier: not followed
    assert wait_due(schedule, timeout=1.5) is None
    running.set()
    client.xadd(events, {"event": '{"stage": "done", "batch": "b2"}'})
    assert wait_due(schedule, timeout=1.5) is None  # our batch still runs: the trigger waits
    restarted = Schedule(client, spec, running.is_set)  # a manager restart keeps the pending trigger
    restarted.due()
    running.clear()
    assert wait_due(restarted) == BATCH
    assert wait_due(restarted, timeout=1.5) is None  # one event, one batch


def test_pipeline_after_another_runs_when_the_others_join_fires(
        client: redis.Redis, settings: Settings, source_url: str, source_dir: Path) -> None:
    echo = {"input": "source", "command": ["echo", '{"ok": true}'], "executor": "process"}
    first = pipeline(f"{settings.pipeline}-a", path=str(source_dir), work={"work": echo},
                     done={"join": {"input": "work"}})
    second = pipeline(f"{settings.pipeline}-b", {"after": {"pipeline": first.name}}, path=str(source_dir),
                      work={"work": echo})
    stop = threading.Event()
    threads = [threading.Thread(target=run_manager, args=(second, settings, source_url, stop), daemon=True)]
    threads[0].start()
    b_batches = Keys(second.name).batches()
    wait_for(lambda: client.zcard(b_batches) == 1)  # its own first batch, at start
    threads += [threading.Thread(target=run_manager, args=(first, settings, source_url, stop), daemon=True),
                threading.Thread(target=run_barrier, args=(first, "done", settings, stop), daemon=True)]
    for thread in threads[1:]:
        thread.start()
    try:
        wait_for(lambda: client.xlen(Keys(first.name).events()) == 1, timeout=30)
        wait_for(lambda: client.zcard(b_batches) == 2, timeout=30)  # started by the join's event
        time.sleep(1.5)
        assert client.zcard(b_batches) == 2  # once
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
