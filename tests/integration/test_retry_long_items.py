"""An item whose processing legitimately takes longer than the visibility timeout is never processed twice at once
(issue 11, part 3), with another consumer of the stage live and reclaiming: the stream worker renews the entries
it holds (services/workers/lease.py) and the process executor heartbeats them (XCLAIM JUSTID), so no reclaim takes
them while they run. Each case: one item taking 3x the visibility timeout, two consumers; the command logs its
start and end, and the item must run exactly once, committed once."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from services.core import Keys, Settings, WorkItem, list_dead_letters
from services.core.spec import Pipeline
from services.manager.executors import StageContext, executor_class, stage_settings
from services.workers import run_worker

VT_S = 1.2  # renewed every third of it: a renewal may come 0.8 s late (a loaded machine) before a reclaim could win

SLOW = """
import os, sys, time
log = sys.argv[1]
with open(log, "a") as f:
    f.write(f"start {os.getpid()} {time.time()}\\n")
time.sleep(float(sys.argv[2]))
with open(log, "a") as f:
    f.write(f"end {os.getpid()} {time.time()}\\n")
print("{}")
"""


def _pipeline(name: str, executor: str, tmp: Path) -> Pipeline:
    (tmp / "slow.py").write_text(SLOW)
    command = [sys.executable, str(tmp / "slow.py"), str(tmp / "runs.log"), str(3 * VT_S)]
    return Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
        "defaults": {"visibility_timeout": VT_S, "max_deliveries": 2},
        "stages": {"w": {"work": {"input": "source", "command": command, "executor": executor}}}})


def _check(client: redis.Redis, settings: Settings, tmp: Path) -> None:
    keys = Keys(settings.pipeline)
    deadline = time.monotonic() + 30
    while client.hget(keys.results(), "long") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(VT_S * 2)  # a reclaim that wrongly took it would start a second copy by now
    runs = [line.split() for line in (tmp / "runs.log").read_text().splitlines()]
    assert [r[0] for r in runs] == ["start", "end"], f"ran more than once (or overlapped): {runs}"
    assert client.hget(keys.results(), "long") is not None
    assert list_dead_letters(client, keys, "w") == []
    assert int(client.hget(keys.stage_stats("w"), "out") or 0) == 1


@pytest.mark.one_backend
def test_stream_workers_renew_a_long_item_while_another_replica_reclaims(client: redis.Redis, settings: Settings,
                                                                        tmp_path: Path) -> None:
    pipeline = _pipeline(settings.pipeline, "stream", tmp_path)
    cfg = settings.model_copy(update={"visibility_timeout_ms": int(VT_S * 1000), "max_deliveries": 2,
                                      "out_dir": tmp_path / "out"})
    stop = threading.Event()
    threads = [threading.Thread(target=run_worker, args=(pipeline, "w", cfg, stop), daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)  # both consumers are up and reading before the item arrives
        client.xadd(Keys(settings.pipeline).stream("source"), WorkItem(id="long", batch="b").encode())
        _check(client, settings, tmp_path)
    finally:
        stop.set()
        for t in threads:
            t.join(20)


@pytest.mark.one_backend
def test_process_executors_heartbeat_a_long_item_while_another_manager_reclaims(client: redis.Redis,
                                                                               settings: Settings,
                                                                               tmp_path: Path) -> None:
    pipeline = _pipeline(settings.pipeline, "process", tmp_path)
    base = settings.model_copy(update={"out_dir": tmp_path / "out"})
    executors = [executor_class("process")(StageContext(client, pipeline, "w", stage_settings(pipeline, "w", base)))
                 for _ in range(2)]
    for e in executors:
        e.start()
    try:
        time.sleep(0.5)
        client.xadd(Keys(settings.pipeline).stream("source"), WorkItem(id="long", batch="b").encode())
        _check(client, settings, tmp_path)
    finally:
        for e in executors:
            e.stop(20)
