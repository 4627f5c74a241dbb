"""The process executor's IO thread (services/manager/executors/process_io.py) against real Redis and real
subprocesses: entries this consumer still has in hand (running, or settled with the commit on its way) are never
run a second time by its own reclaim. The reclaim here is made as eager as a Redis stall past the visibility
timeout would make it (XAUTOCLAIM with no minimum idle time, due at every read): each item still runs once, its
result is recorded once, nothing stays pending or held, nothing is dead-lettered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from services.core import Keys, Progress, Settings, StreamConsumer
from services.core.batch_decode import deliveries
from services.core.spec import Pipeline
from services.manager.diff import Dispatcher
from services.manager.executors import StageContext, executor_class, stage_settings

N = 6
RUN = ["sh", "-c", 'echo run >> "$WORK_OUTPUT_DIR/runs"; sleep 0.15; echo "{}"']


def _eager_reclaim(self: StreamConsumer, count: int | None = None) -> list:
    """This consumer's pending entries, however recently delivered (as a reclaim after a long stall would find
    them), and due again at the next read."""
    self._next_reclaim = 0.0
    self._reclaimed_last = False
    _, claimed, *_ = self.client.xautoclaim(self.stream_key, self.group, self.consumer, 0, start_id="0-0",
                                            count=count or 100)
    self.reclaimed_seen = getattr(self, "reclaimed_seen", 0) + len(claimed)
    return deliveries([(e, f) for e, f in claimed if e is not None], {}, 2)


def test_a_self_reclaim_of_entries_in_hand_does_not_run_them_again(client: redis.Redis, settings: Settings,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    name = settings.pipeline
    keys = Keys(name)
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
        "stages": {"w": {"work": {"input": "source", "executor": "process", "concurrency": 2, "command": RUN}}}})
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out", "max_deliveries": 1000})
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    Dispatcher(client, keys, Progress(client, keys), batch="b").dispatch(
        [{"name": f"i{n}", "version": "v1"} for n in range(N)])
    monkeypatch.setattr(StreamConsumer, "reclaim", _eager_reclaim)
    executor = executor_class("process")(StageContext(client, pipeline, "w", stage_settings(pipeline, "w", cfg)))
    executor.start()
    try:
        deadline = time.monotonic() + 60
        while Progress(client, keys).counts().get("done", 0) < N:
            assert executor.alive, executor.error
            assert time.monotonic() < deadline, Progress(client, keys).counts()
            time.sleep(0.05)
        time.sleep(0.3)  # reads (and eager reclaims) go on while the executor idles: nothing may run again
    finally:
        executor.stop(10)
    assert executor.error is None
    assert executor.consumer.reclaimed_seen > 0  # the reclaim did return entries in hand
    runs = {d.name: (d / "runs").read_text().count("run") for d in (tmp_path / "out" / "w").iterdir()}
    assert runs == {f"i{n}": 1 for n in range(N)}
    assert client.hlen(keys.results()) == N
    assert client.xpending(keys.stream("source"), "w")["pending"] == 0
    assert client.hlen(f"{keys.prefix}:held:w") == 0
    assert client.xlen(keys.dead_letters("w")) == 0
