"""The `stream` worker's batch loop for a chain of one function (workers.runtime._run_batch) and its deferred
`running` mark (workers.mark_later), against a real Redis: each outcome is what the generic adapter path gives, a
batch done within the delay goes from queued to done without a mark, a slower one is marked running while it
runs, and its item is held (core.held) from the start either way."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis

from services.core import Keys, Progress, Settings, StreamConsumer, WorkItem, list_dead_letters
from services.core.item import encode_json
from services.core.spec import Pipeline
from services.workers import run_worker, worker
from services.workers.adapters import FunctionAdapter
from services.workers.mark_later import DeferredMark


@worker("test-marks-mixed", writes=False)
def mixed(item: dict[str, Any], output_dir: Path) -> Any:
    kind = item["data"]["kind"]
    if kind == "raise":
        raise ValueError(f"no {item['id']}")
    return {"none": None, "empty": {}, "scalar": 7, "dict": {"id": item["id"]}}[kind]


def test_each_outcome_of_the_batch_loop_is_the_adapter_s(client: redis.Redis, settings: Settings,
                                                         tmp_path: Path) -> None:
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out", "max_deliveries": 1})
    keys = Keys(cfg.pipeline)
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": cfg.pipeline, "source": {"path": "."},
                                        "stages": {"w": {"work": {"input": "source", "worker": "test-marks-mixed"}}}})
    kinds = ["none", "empty", "scalar", "dict", "raise"] * 3
    items = [WorkItem(id=f"i{n}", data={"kind": kind}) for n, kind in enumerate(kinds)]
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    for item in items:
        client.xadd(keys.stream("source"), item.encode())
    run_worker(pipeline, "w", cfg, threading.Event(), max_items=len(items))
    adapter = FunctionAdapter(mixed)
    results = {k.decode(): v for k, v in client.hgetall(keys.results()).items()}
    dead = {d.item_id: d.reason for d in list_dead_letters(client, keys, "w")}
    for item in items:
        outcome = adapter.run(item, tmp_path)
        if outcome.ok:
            assert results[item.id] == encode_json(outcome.result or {}), item
        else:
            assert dead[item.id] == outcome.reason == f"ValueError: no {item.id}", item
    counts = Progress(client, keys).counts()
    assert counts["done"] == 12 and counts["dead"] == 3 and counts["running"] == 0 and counts["queued"] == 0


def test_a_batch_done_within_the_delay_is_never_marked_and_a_slower_one_is(client: redis.Redis,
                                                                         settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    progress = Progress(client, keys)
    c = StreamConsumer(client, settings, stage="work", input_stream="in", consumer="c1")
    for item_id in ("fast", "slow"):
        client.xadd(keys.stream("in"), WorkItem(id=item_id).encode())
    progress.mark(["fast", "slow"], "queued")
    marks = DeferredMark(client, "work", delay_s=0.2)
    try:
        for item_id, works_s in (("fast", 0.0), ("slow", 0.6)):
            batch = c.read(count=1)
            assert [d.item.id for d in batch if d.item] == [item_id]
            held = c.held.send_hold(c, batch, running=False)
            marks.arm(lambda batch=batch: c.held.running_command(c, batch))
            time.sleep(works_s)
            state_while_running = progress.state_of(item_id)
            reply = marks.settle()
            assert held is not None
            held.wait()
            assert client.hexists(c.held.key, batch[0].entry_id), "held from the start"
            if works_s:
                assert reply is not None and state_while_running == "running"
                reply.wait()
            else:
                assert reply is None and state_while_running == "queued"
            commit_one(c, batch)
            assert progress.state_of(item_id) == "done"
        time.sleep(0.3)  # nothing armed: nothing is sent late
        assert progress.counts()["running"] == 0 and progress.counts()["done"] == 2
        assert client.hlen(c.held.key) == 0
    finally:
        marks.close()


def commit_one(c: StreamConsumer, batch: list) -> None:  # type: ignore[type-arg]
    from services.core.stage import Commit

    commit = Commit()
    commit.record_many(batch, b"{}")
    c.commit(commit)
