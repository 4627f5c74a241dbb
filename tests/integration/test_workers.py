"""The worker runtime against a real Redis: in-process and command workers, the multi-worker chain, retries and
dead letters (then replay), malformed entries, timeouts and a clean stop."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from services.core import DEAD, DONE, Keys, Progress, Settings, WorkItem, list_dead_letters, replay
from services.core.results import results
from services.core.spec import Pipeline
from services.workers import run_worker, worker
from services.workers.chain import build_chain
from services.workers.runtime import _Worker


@worker("test-add-one")
def add_one(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    (output_dir / "seen.txt").write_text(str(item["data"]["n"]))
    return {**item["data"], "n": item["data"]["n"] + 1}


@worker("test-finalise")
def finalise(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    return {"n": item["data"]["n"], "final": True, "keys": sorted(item["data"])}


@worker("test-tag")
def tag(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    return {"tagged": item["data"], "attempt": item["attempt"]}


def unencodable(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    return {"when": time}  # a module is no JSON


# A command worker: sleeps data.sleep s; fails (exit 3) if data.fail, unless file data.ok_if exists; doubles data.n.
DOUBLE = """\
import json, os, pathlib, sys, time
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
data, out = item["data"], pathlib.Path(os.environ["WORK_OUTPUT_DIR"])
time.sleep(data.get("sleep", 0))
if data.get("fail") and not (data.get("ok_if") and os.path.exists(data["ok_if"])):
    sys.stderr.write(f"refusing {item['id']} on attempt {item['attempt']}\\n")
    sys.exit(3)
(out / "result.json").write_text(json.dumps({**data, "n": data.get("n", 0) * 2, "env": os.environ.get("WHO")}))
"""


def make_pipeline(name: str, **stages: dict[str, Any]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": stages})


def dispatch(client: redis.Redis, settings: Settings, *items: WorkItem) -> None:
    pipe = client.pipeline()
    for item in items:
        pipe.xadd(Keys(settings.pipeline).stream("source"), item.encode())
    pipe.execute()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def running(pipeline: Pipeline, stage: str, settings: Settings) -> Iterator[threading.Event]:
    """A worker in a thread; stopped (and its errors re-raised) when the block ends."""
    stop, errors = threading.Event(), []

    def target() -> None:
        try:
            run_worker(pipeline, stage, settings, stop)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "worker did not stop"
    if errors:
        raise errors[0]


@pytest.fixture
def cfg(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"out_dir": tmp_path / "out"})


@pytest.fixture
def double(tmp_path: Path) -> list[str]:
    script = tmp_path / "double.py"
    script.write_text(DOUBLE)
    return [sys.executable, str(script)]


def test_in_process_echo_worker(client: redis.Redis, cfg: Settings, pipeline_name: str) -> None:
    pipeline = make_pipeline(pipeline_name, echo={"work": {"input": "source", "worker": "echo"}})
    keys, n = Keys(cfg.pipeline), 300
    dispatch(client, cfg, *(WorkItem(id=f"item-{i}", data={"i": i}) for i in range(n)))
    with running(pipeline, "echo", cfg.model_copy(update={"batch_size": 64})):
        wait_for(lambda: Progress(client, keys).counts()[DONE] == n, what="all done")
        # trimmed once every group acknowledged: MINID keeps at most the last delivered entry
        wait_for(lambda: client.xlen(keys.stream("source")) <= 1, what="source stream trimmed")
    assert results(client, keys) == {f"item-{i}": {"i": i} for i in range(n)}
    counts = Progress(client, keys).counts()
    assert counts[DONE] == n and counts["running"] == 0
    assert client.xpending(keys.stream("source"), "echo")["pending"] == 0
    assert client.xinfo_consumers(keys.stream("source"), "echo") == []  # a clean stop leaves the group


def test_two_stages_hand_results_on(client: redis.Redis, cfg: Settings, pipeline_name: str) -> None:
    pipeline = make_pipeline(pipeline_name, first={"work": {"input": "source", "worker": "echo"}},
                             second={"work": {"input": "first", "worker": "test-tag"}})
    keys = Keys(cfg.pipeline)
    dispatch(client, cfg, WorkItem(id="a", data={"x": 1}), WorkItem(id="b", data={"x": 2}))
    with running(pipeline, "first", cfg), running(pipeline, "second", cfg):
        wait_for(lambda: Progress(client, keys).counts()[DONE] == 2, what="both done")
    assert results(client, keys) == {"a": {"tagged": {"x": 1}, "attempt": 1}, "b": {"tagged": {"x": 2}, "attempt": 1}}
    assert int(client.hget(keys.stage_stats("first"), "out")) == 2


def test_command_worker(client: redis.Redis, cfg: Settings, pipeline_name: str, double: list[str]) -> None:
    stage = {"input": "source", "command": double, "env": {"WHO": "stage-env"}, "concurrency": 3}
    pipeline = make_pipeline(pipeline_name, dbl={"work": stage})
    keys = Keys(cfg.pipeline)
    dispatch(client, cfg, *(WorkItem(id=f"file {i}.txt", data={"n": i}) for i in range(6)))
    with running(pipeline, "dbl", cfg):
        wait_for(lambda: Progress(client, keys).counts()[DONE] == 6, what="all done")
    got = results(client, keys)
    assert {k: v["n"] for k, v in got.items()} == {f"file {i}.txt": 2 * i for i in range(6)}
    assert {v["env"] for v in got.values()} == {"stage-env"}
    assert (cfg.out_dir / "dbl" / WorkItem(id="file 3.txt").dirname / "result.json").exists()


def test_chain_feeds_each_output_to_the_next(
    client: redis.Redis, cfg: Settings, pipeline_name: str, double: list[str]
) -> None:
    chain = [{"worker": "test-add-one"}, {"command": double}, {"worker": "test-finalise"}]
    pipeline = make_pipeline(pipeline_name, multi={"work": {"input": "source", "chain": chain, "max_deliveries": 1}})
    keys = Keys(cfg.pipeline)
    dispatch(client, cfg, WorkItem(id="ok", data={"n": 1}), WorkItem(id="bad", data={"n": 1, "fail": True}))
    with running(pipeline, "multi", cfg):
        wait_for(lambda: Progress(client, keys).counts()[DONE] == 1, what="ok done")
        wait_for(lambda: list_dead_letters(client, keys, "multi"), what="bad dead-lettered")
    # (1 + 1) * 2 = 4; the last adapter saw only the command's result as its data
    assert results(client, keys) == {"ok": {"n": 4, "final": True, "keys": ["env", "n"]}}
    item_dir = cfg.out_dir / "multi" / "ok"
    assert sorted(p.name for p in item_dir.iterdir()) == ["0-test-add-one", "1-double.py", "2-test-finalise"]
    assert (item_dir / "0-test-add-one" / "seen.txt").read_text() == "1"
    assert (item_dir / "1-double.py" / "result.json").exists()
    [letter] = list_dead_letters(client, keys, "multi")
    assert letter.item_id == "bad"
    assert letter.reason.startswith("chain[1] double.py: exit code 3: refusing bad")
    assert Progress(client, keys).state_of("bad") == DEAD


def test_poison_item_is_dead_lettered_then_replayed(
    client: redis.Redis, cfg: Settings, pipeline_name: str, double: list[str], tmp_path: Path
) -> None:
    pipeline = make_pipeline(pipeline_name, dbl={"work": {"input": "source", "command": double}})
    keys, flag = Keys(cfg.pipeline), tmp_path / "fixed"
    dispatch(client, cfg, WorkItem(id="poison", data={"n": 5, "fail": True, "ok_if": str(flag)}))
    with running(pipeline, "dbl", cfg):
        letters = wait_for(lambda: list_dead_letters(client, keys, "dbl"), what="dead letter")
        assert Progress(client, keys).state_of("poison") == DEAD
        [letter] = letters
        assert letter.deliveries == cfg.max_deliveries == 3
        assert letter.reason == "exit code 3: refusing poison on attempt 3"
        assert int(client.hget(keys.stage_stats("dbl"), "failed")) == 3
        flag.touch()  # "fix the bug", then replay
        assert replay(client, keys, "dbl") == 1
        wait_for(lambda: Progress(client, keys).state_of("poison") == DONE, what="replayed item done")
    assert results(client, keys)["poison"]["n"] == 10
    assert list_dead_letters(client, keys, "dbl") == []
    counts = Progress(client, keys).counts()
    assert (counts[DONE], counts[DEAD]) == (1, 0)


def test_malformed_entries_are_dead_lettered(client: redis.Redis, cfg: Settings, pipeline_name: str) -> None:
    pipeline = make_pipeline(pipeline_name, echo={"work": {"input": "source", "worker": "echo"}})
    keys = Keys(cfg.pipeline)
    for garbage in ({"junk": "x"}, {"item": "{not json"}):
        client.xadd(keys.stream("source"), garbage)
    dispatch(client, cfg, WorkItem(id="good"))
    with running(pipeline, "echo", cfg):
        wait_for(lambda: Progress(client, keys).state_of("good") == DONE, what="good item done")
        wait_for(lambda: len(list_dead_letters(client, keys, "echo")) == 2, what="two dead letters")
    letters = list_dead_letters(client, keys, "echo")
    assert all(letter.reason.startswith("malformed item") for letter in letters)
    assert letters[1].raw_item == b"{not json"
    assert replay(client, keys, "echo") == 0  # nothing to put back: they stay


def test_functions_by_import_path(client: redis.Redis, cfg: Settings, pipeline_name: str) -> None:
    """"module:function" workers: a non-dict result is wrapped; a raise or an unencodable result fails the item."""
    outcomes = {}
    cases = (("ok", "operator:is_not"), ("raises", "os.path:join"), ("unencodable", f"{__name__}:unencodable"))
    for stage, target in cases:
        name = f"{pipeline_name}-{stage}"  # a pipeline each: every stage would otherwise read every item
        pipeline = make_pipeline(name, **{stage: {"work": {"input": "source", "worker": target}}})
        settings, keys = cfg.model_copy(update={"pipeline": name}), Keys(name)
        dispatch(client, settings, WorkItem(id=stage))
        with running(pipeline, stage, settings):
            wait_for(lambda: Progress(client, keys).state_of(stage) in (DONE, DEAD), what=f"{stage} settled")  # noqa: B023
        outcomes[stage] = results(client, keys), list_dead_letters(client, keys, stage)
    assert outcomes["ok"] == ({"ok": {"result": True}}, [])
    [raised], [unencodable] = outcomes["raises"][1], outcomes["unencodable"][1]
    assert raised.reason.startswith("TypeError: ") and raised.deliveries == 3
    assert unencodable.reason.startswith("result is not JSON: ")


def test_timeout(client: redis.Redis, cfg: Settings, pipeline_name: str, double: list[str]) -> None:
    stage = {"input": "source", "command": double, "timeout": "300ms", "max_deliveries": 1}
    pipeline = make_pipeline(pipeline_name, slow={"work": stage})
    keys = Keys(cfg.pipeline)
    dispatch(client, cfg, WorkItem(id="slow", data={"sleep": 120}))  # killed at 0.3 s: the sleep costs nothing
    started = time.monotonic()
    with running(pipeline, "slow", cfg):
        [letter] = wait_for(lambda: list_dead_letters(client, keys, "slow"), what="dead letter")
    assert time.monotonic() - started < 60  # the timeout, however loaded the machine: not the item's 120 s
    # the stage's max_deliveries (1) overrides the settings' (3)
    assert (letter.reason, letter.deliveries) == ("timed out after 0.3s", 1)


def test_stop_finishes_the_batch_in_hand(client: redis.Redis, cfg: Settings, pipeline_name: str) -> None:
    pipeline = make_pipeline(pipeline_name, nap={"work": {"input": "source", "worker": "sleep"}})
    keys = Keys(cfg.pipeline)
    dispatch(client, cfg, *(WorkItem(id=f"n{i}", data={"seconds": 0.1}) for i in range(8)))
    with running(pipeline, "nap", cfg) as stop:
        wait_for(lambda: Progress(client, keys).counts()["running"] >= 1, what="batch running")
        stop.set()
    counts = Progress(client, keys).counts()  # the thread has returned: everything it read is committed
    assert counts[DONE] >= 1 and counts["running"] == 0
    done = results(client, keys)
    assert len(done) == counts[DONE] and all(r == {"seconds": 0.1, "slept": 0.1} for r in done.values())


def test_slow_items_are_read_a_few_at_a_time_fast_ones_in_big_batches(client: redis.Redis, cfg: Settings,
                                                                      pipeline_name: str) -> None:
    """A read takes about BATCH_SECONDS of work: a replica does not hoard slow items others could run, and the
    next stage gets each slow item as soon as it is done."""
    pipeline = make_pipeline(pipeline_name, nap={"work": {"input": "source", "worker": "sleep"}},
                             fast={"work": {"input": "nap", "worker": "noop"}})
    keys = Keys(cfg.pipeline)
    dispatch(client, cfg, *(WorkItem(id=f"s{i}", data={"seconds": 0.2}) for i in range(6)))
    with running(pipeline, "nap", cfg):
        wait_for(lambda: int(client.hget(keys.stage_stats("nap"), "out") or 0) >= 2, what="two slow items done")
        assert client.xpending(keys.stream("source"), "nap")["pending"] <= 1  # never all six at once
    fast = _Worker(pipeline, "fast", cfg, build_chain(pipeline.stages["fast"].body, "fast", []), client)
    assert fast.read_count() == 1  # nothing known yet: one item tells how slow they are
    fast.item_s = 0.00001
    assert fast.read_count() == cfg.batch_size
    fast.item_s = 0.01
    assert fast.read_count() == 5
