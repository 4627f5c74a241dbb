"""The bounded worker (`batchmesh worker --max-items N [--idle-exit S]`): what a KEDA ScaledJob's pod runs. It reads
at most N entries, commits them exactly as the long-lived worker does (same code path: done, retried, dead-lettered)
and returns by itself; with nothing to read it returns after the idle time. Real Redis, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from services.core import Keys, Settings, WorkItem
from services.core.spec import Pipeline
from services.workers import run_worker, worker

ROOT = Path(__file__).resolve().parents[2]


def make_pipeline(name: str, **stages: dict[str, Any]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": stages})


@worker("test-bounded-ok")
def ok(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    return {"n": item["data"]["n"]}


@worker("test-bounded-fail")
def fail(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    raise RuntimeError("always fails")


def bounded(pipeline: Pipeline, stage: str, settings: Settings, **kw: Any) -> float:
    """Run a bounded worker in a thread whose stop is never set; returns the seconds it took to return."""
    began = time.monotonic()
    thread = threading.Thread(target=run_worker, args=(pipeline, stage, settings, threading.Event()), kwargs=kw,
                              daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the bounded worker did not return by itself"
    return time.monotonic() - began


def feed(client: redis.Redis, keys: Keys, n: int) -> None:
    for i in range(n):
        client.xadd(keys.stream("source"), WorkItem(id=f"i{i}", data={"n": i}).encode())


def group(client: redis.Redis, keys: Keys, stage: str) -> dict[str, Any]:
    [info] = [g for g in client.xinfo_groups(keys.stream("source")) if g["name"].decode() == stage]
    return info


@pytest.mark.one_backend
def test_one_entry_committed_then_it_returns(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    name = settings.pipeline
    pipeline = make_pipeline(name, w={"work": {"input": "source", "worker": "test-bounded-ok", "concurrency": 2}},
                             sink={"work": {"input": "w", "worker": "test-bounded-ok"}})
    keys = Keys(name)
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    client.xgroup_create(keys.stream("w"), "sink", id="0", mkstream=True)
    feed(client, keys, 5)
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out"})
    bounded(pipeline, "w", cfg, max_items=1)
    out = client.xrange(keys.stream("w"))
    assert [WorkItem.decode(f).id for _, f in out] == ["i0"]  # exactly one, published and acknowledged
    g = group(client, keys, "w")
    assert g["pending"] == 0 and g["consumers"] == 0  # acknowledged; the consumer left the group
    assert int(client.hget(keys.stage_stats("w"), "timed") or 0) == 1  # the service time, as ever

    bounded(pipeline, "w", cfg, max_items=3)  # a bounded few
    assert [WorkItem.decode(f).id for _, f in client.xrange(keys.stream("w"))] == ["i0", "i1", "i2", "i3"]
    assert group(client, keys, "w")["pending"] == 0


@pytest.mark.one_backend
def test_a_failure_is_retried_then_dead_lettered_one_entry_per_run(client: redis.Redis, settings: Settings,
                                                                   tmp_path: Path) -> None:
    name = settings.pipeline
    pipeline = make_pipeline(name, w={"work": {"input": "source", "worker": "test-bounded-fail",
                                               "max_deliveries": 2}})
    keys = Keys(name)
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    feed(client, keys, 1)
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out"})
    bounded(pipeline, "w", cfg, max_items=1, idle_exit_s=3)
    assert client.xlen(keys.dead_letters("w")) == 0  # first delivery failed: retried (a new entry or scheduled)
    assert group(client, keys, "w")["pending"] == 0
    deadline = time.monotonic() + 60  # a retry may wait out a backoff (the spec's retry policy)
    while client.xlen(keys.dead_letters("w")) == 0 and time.monotonic() < deadline:
        bounded(pipeline, "w", cfg, max_items=1, idle_exit_s=1)  # the next Job: the retry, once it is due
    [(_, letter)] = client.xrange(keys.dead_letters("w"))
    assert b"always fails" in b"".join(letter.values())
    assert group(client, keys, "w")["pending"] == 0


@pytest.mark.one_backend
def test_idle_exit_with_nothing_to_read(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    pipeline = make_pipeline(settings.pipeline, w={"work": {"input": "source", "worker": "test-bounded-ok"}})
    keys = Keys(settings.pipeline)
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    took = bounded(pipeline, "w", settings.model_copy(update={"out_dir": tmp_path}), max_items=1, idle_exit_s=0.5)
    assert 0.5 <= took < 30


@pytest.mark.one_backend
def test_cli_exits_0_after_one_entry(redis_url: str, pipeline_name: str,
                                                         tmp_path: Path) -> None:
    spec = tmp_path / "pipeline.yaml"
    script = tmp_path / "item.py"
    script.write_text("import os, pathlib\n"
                      "pathlib.Path(os.environ['WORK_OUTPUT_DIR'], 'result.json').write_text('{\"ok\": true}')\n")
    spec.write_text(f"apiVersion: batchmesh/v1\nkind: Pipeline\nname: {pipeline_name}\nsource: {{path: .}}\n"
                    f"stages:\n  w:\n    work: {{input: source, command: [{sys.executable}, {script}]}}\n")
    client = redis.Redis.from_url(redis_url)
    keys = Keys(pipeline_name)
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    feed(client, keys, 2)
    first, _ = (entry_id for entry_id, _ in client.xrange(keys.stream("source")))
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "BATCHMESH_BLOCK_MS": "100"}
    argv = [sys.executable, "-m", "services.cli", "worker", "--pipeline", str(spec), "--stage", "w",
            "--out", str(tmp_path / "out")]
    done = subprocess.run([*argv, "--max-items", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert client.hlen(keys.results()) == 1  # a sink: its result recorded
    g = group(client, keys, "w")
    assert g["pending"] == 0 and g["last-delivered-id"] == first  # one committed, one left for the next Job



def test_a_bad_bound_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    for bad in (["--max-items", "0"], ["--max-items", "x"], ["--idle-exit", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["worker", "--pipeline", "p.yaml", "--stage", "w", *bad])
        assert exc.value.code == 2 and bad[0] in capsys.readouterr().err
