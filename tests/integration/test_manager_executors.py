"""The manager's executors against real Redis: `process` (a subprocess per item, run by the manager) and `rq`
(an rq job per item, run by a real rq SimpleWorker), each end to end, failures included: a failing command
ends in the stage's dead-letter stream with its stderr as the reason, and the item is marked dead."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from services.core import Keys, Progress, Settings, StreamConsumer, WorkItem, list_dead_letters
from services.core.results import results
from services.core.spec import Pipeline
from services.manager.diff import Dispatcher
from services.manager.executors import Executor, StageContext, executor_class, rq_queue_name, stage_settings
from services.manager.executors.rq import RqExecutor

OK = ["echo", '{"ok": true}']
FAIL = ["sh", "-c", "echo 'no such frobnicator' >&2; exit 3"]


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def make_pipeline(name: str, stages: dict[str, dict[str, Any]]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": {k: {"work": v} for k, v in stages.items()}})


def dispatch(client: redis.Redis, name: str, ids: list[str]) -> None:
    keys = Keys(name)
    Dispatcher(client, keys, Progress(client, keys), batch="b").dispatch([{"name": i, "version": "v1"} for i in ids])


@pytest.fixture
def run_stages(client: redis.Redis, settings: Settings, tmp_path: Path) -> Iterator[Callable[..., list[Executor]]]:
    started: list[Executor] = []

    def start(pipeline: Pipeline, pipeline_path: Path | None = None) -> list[Executor]:
        base = settings.model_copy(update={"out_dir": tmp_path / "out"})
        for name, stage in pipeline.stages.items():
            ctx = StageContext(client, pipeline, name, stage_settings(pipeline, name, base), pipeline_path)
            executor = executor_class(stage.body.executor)(ctx)
            executor.start()
            started.append(executor)
        return started

    yield start
    for executor in started:
        executor.stop(10)


def state_counts(client: redis.Redis, name: str) -> dict[str, int]:
    return Progress(client, Keys(name)).counts()


def test_process_executor_runs_each_item_and_chains_stages(client: redis.Redis, pipeline_name: str,
                                                           run_stages: Callable[..., list[Executor]],
                                                           tmp_path: Path) -> None:
    pipeline = make_pipeline(pipeline_name, {
        "first": {"input": "source", "executor": "process", "concurrency": 4,
                  "command": [sys.executable, "-c", "import json, os; d = json.load(open(os.environ["
                              "'WORK_ITEM_FILE'])); print(json.dumps({'seen': d['id'], 'attempt': d['attempt']}))"]},
        "second": {"input": "first", "executor": "process", "concurrency": 2, "worker": "echo"},
    })
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(pipeline.model_dump(by_alias=True)))
    run_stages(pipeline, path)
    dispatch(client, pipeline_name, [f"item-{i}" for i in range(12)])
    wait_for(lambda: state_counts(client, pipeline_name)["done"] == 12)
    got = results(client, Keys(pipeline_name))
    assert got["item-3"] == {"seen": "item-3", "attempt": 1}  # the second stage (a chain via `once`) echoed it
    assert state_counts(client, pipeline_name) == {"queued": 0, "running": 0, "done": 12, "failed": 0, "dead": 0}
    assert client.hgetall(Keys(pipeline_name).stage_stats("first")) == {b"out": b"12"}
    assert client.xpending(Keys(pipeline_name).stream("source"), "first")["pending"] == 0


def test_process_executor_dead_letters_a_failing_command_with_its_stderr(
        client: redis.Redis, pipeline_name: str, run_stages: Callable[..., list[Executor]]) -> None:
    pipeline = make_pipeline(pipeline_name, {"w": {"input": "source", "executor": "process", "command": FAIL}})
    run_stages(pipeline)
    dispatch(client, pipeline_name, ["bad-1", "bad-2"])
    wait_for(lambda: state_counts(client, pipeline_name)["dead"] == 2)
    letters = list_dead_letters(client, Keys(pipeline_name), "w")
    assert sorted(d.item_id or "" for d in letters) == ["bad-1", "bad-2"]
    assert all(d.deliveries == 3 and "exit code 3" in d.reason and "no such frobnicator" in d.reason
               for d in letters)
    stats = client.hgetall(Keys(pipeline_name).stage_stats("w"))
    assert stats == {b"failed": b"6", b"dead": b"2"}  # 3 attempts each, the cap from the test settings
    assert state_counts(client, pipeline_name)["failed"] == 0


def test_stage_max_deliveries_wins(client: redis.Redis, pipeline_name: str, settings: Settings) -> None:
    pipeline = make_pipeline(pipeline_name, {"w": {"input": "source", "command": OK, "max_deliveries": 5}})
    assert stage_settings(pipeline, "w", settings).max_deliveries == 5


def burst(client: redis.Redis, name: str, stage: str) -> None:
    SimpleWorker([Queue(rq_queue_name(name, stage), connection=client)], connection=client).work(burst=True)


def test_rq_executor_end_to_end_with_dead_letters(client: redis.Redis, pipeline_name: str,
                                                  run_stages: Callable[..., list[Executor]]) -> None:
    pipeline = make_pipeline(pipeline_name, {
        "ok": {"input": "source", "executor": "rq", "command": OK},
        "bad": {"input": "source", "executor": "rq", "command": FAIL},
    })
    run_stages(pipeline)
    dispatch(client, pipeline_name, ["a", "b", "c"])
    queues = {s: Queue(rq_queue_name(pipeline_name, s), connection=client) for s in ("ok", "bad")}
    wait_for(lambda: all(q.count == 3 for q in queues.values()))
    burst(client, pipeline_name, "ok")
    assert results(client, Keys(pipeline_name)) == {k: {"ok": True} for k in "abc"}
    assert state_counts(client, pipeline_name)["done"] == 3
    # The same items through the failing stage: rq retries (max_deliveries - 1 = 2), then our dead letters.
    Progress(client, Keys(pipeline_name)).mark(list("abc"), "queued", force=True)
    burst(client, pipeline_name, "bad")
    letters = list_dead_letters(client, Keys(pipeline_name), "bad")
    assert sorted(d.item_id or "" for d in letters) == list("abc")
    assert all("exit code 3" in d.reason and "no such frobnicator" in d.reason and d.deliveries == 3
               for d in letters)
    assert letters[0].stream == Keys(pipeline_name).stream("source")  # so `dlq replay` puts it back there
    assert state_counts(client, pipeline_name)["dead"] == 3
    assert client.hgetall(Keys(pipeline_name).stage_stats("bad")) == {b"failed": b"9", b"dead": b"3"}
    assert client.hget(Keys(pipeline_name).stage_stats("ok"), "out") == b"3"


def test_rq_redelivery_does_not_enqueue_twice(client: redis.Redis, pipeline_name: str, settings: Settings) -> None:
    pipeline = make_pipeline(pipeline_name, {"w": {"input": "source", "executor": "rq", "command": OK}})
    executor = RqExecutor(StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings)))
    dispatch(client, pipeline_name, ["x", "y"])
    consumer = StreamConsumer(client, settings, stage="w", input_stream="source")
    batch = consumer.read()
    executor.consumer, executor.queue = consumer, Queue(rq_queue_name(pipeline_name, "w"), connection=client)
    executor.retry, executor.meta = None, {"max_deliveries": 1, "input": consumer.stream_key}
    executor.enqueue(batch)
    executor.enqueue(batch)  # as if the entries came back: their jobs are still queued
    assert executor.queue.count == 2
    assert client.xpending(consumer.stream_key, "w")["pending"] == 0  # acknowledged with the enqueue
    assert sorted(executor.queue.job_ids) == sorted(
        f"bm-{pipeline_name}-w-{WorkItem(id=k).key}-v1" for k in ("x", "y"))


def test_process_executor_heartbeats_items_longer_than_the_visibility_timeout(
        client: redis.Redis, pipeline_name: str, run_stages: Callable[..., list[Executor]]) -> None:
    """Visibility timeout 300 ms, items take 800 ms: still each runs once (its own reclaim must not take it)."""
    slow = ["sh", "-c", 'echo run >> "$WORK_OUTPUT_DIR/runs"; sleep 0.8; echo "{}"']
    pipeline = make_pipeline(pipeline_name, {"w": {"input": "source", "executor": "process", "command": slow,
                                                   "concurrency": 2}})
    executors = run_stages(pipeline)
    dispatch(client, pipeline_name, ["s1", "s2", "s3"])
    wait_for(lambda: state_counts(client, pipeline_name)["done"] == 3)
    runs = [(executors[0].ctx.out_dir / name / "runs").read_text().count("run") for name in ("s1", "s2", "s3")]
    assert runs == [1, 1, 1]


def test_process_executor_stop_leaves_unstarted_items_for_the_next_manager(
        client: redis.Redis, pipeline_name: str, settings: Settings, tmp_path: Path) -> None:
    pipeline = make_pipeline(pipeline_name, {"w": {"input": "source", "executor": "process", "concurrency": 1,
                                                   "command": ["sh", "-c", "sleep 0.3; echo '{}'"]}})
    ctx = StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings))
    dispatch(client, pipeline_name, [f"i{i}" for i in range(4)])
    first = executor_class("process")(ctx)
    first.start()
    wait_for(lambda: state_counts(client, pipeline_name)["done"] >= 1)
    first.stop(10)
    assert state_counts(client, pipeline_name)["done"] < 4  # the rest was read ahead, not run: still pending
    second = executor_class("process")(ctx)  # same consumer name, as a restarted manager would have
    second.start()
    try:
        wait_for(lambda: state_counts(client, pipeline_name)["done"] == 4)
    finally:
        second.stop(10)


def test_stream_executor_reports_desired_replicas(client: redis.Redis, pipeline_name: str,
                                                  settings: Settings) -> None:
    from prometheus_client import REGISTRY

    pipeline = make_pipeline(pipeline_name, {"w": {"input": "source", "command": OK, "concurrency": 2,
                                                   "replicas": {"min": 1, "max": 8}}})
    executor = executor_class("stream")(StageContext(client, pipeline, "w", settings))
    labels = {"pipeline": pipeline_name, "stage": "w"}
    for want in (1, 3, 8):  # the autoscaler's decision (services.manager.autoscale), as status() reports it
        executor.observe({"backlog": 0, "desired_replicas": want})
        assert REGISTRY.get_sample_value("batchmesh_desired_replicas", labels) == want
