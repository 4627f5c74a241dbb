"""Worker pieces without Redis: the registry, the adapters, the chain and the one-shot worker."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from services.core.command import item_document, run_command
from services.core.item import WorkItem
from services.core.spec import SpecError, WorkSpec, load_pipeline
from services.workers import resolve, run_once, worker
from services.workers.adapters import CommandAdapter, FunctionAdapter, command_name, document
from services.workers.chain import Chain, build_chain

REPO = Path(__file__).resolve().parents[2]

UPPER = """\
import json, os, pathlib, sys
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
if item["data"].get("boom"):
    sys.exit("boom in the command")
print(json.dumps({"word": item["data"]["word"].upper()}))
"""


@worker("unit-exclaim")
def exclaim(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    return {**item["data"], "word": item["data"]["word"] + "!"}


@worker("unit-fail")
def fail(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    raise RuntimeError(f"cannot handle {item['id']}")


@pytest.fixture
def upper(tmp_path: Path) -> list[str]:
    (tmp_path / "upper.py").write_text(UPPER)
    return [sys.executable, str(tmp_path / "upper.py")]


def test_builtins_and_import_paths() -> None:
    assert resolve("echo")({"data": {"a": 1}}, Path()) == {"a": 1}
    assert resolve("noop")({}, Path()) == {}
    assert resolve("sleep")({"data": {"seconds": 0}}, Path()) == {"seconds": 0, "slept": 0.0}
    assert resolve("os.path:join") is os.path.join
    for bad in ("nope", "os.path:nope", "no_such_module:f", "__import__('os')", "os:path.sep"):
        with pytest.raises(LookupError):
            resolve(bad)


def test_a_name_belongs_to_one_function() -> None:
    with pytest.raises(ValueError, match="already registered"):
        worker("echo")(exclaim)


def test_function_sees_the_command_document() -> None:
    item = WorkItem(id="a/b c", data={"x": [1]}, version="v2", batch="b1", attempts=2)
    assert document(item) == json.loads(item_document(item))


def test_command_names() -> None:
    assert command_name(["/usr/bin/ffmpeg", "-i"]) == "ffmpeg"
    assert command_name([sys.executable, "/x/thumb.py"]) == "thumb.py"
    assert command_name(["python3", "-m", "mod"]) == "python3"


def test_chain_passes_results_on(tmp_path: Path, upper: list[str]) -> None:
    chain = Chain([FunctionAdapter(exclaim, "exclaim"), CommandAdapter(upper, timeout=30)])
    outcome = chain.run(WorkItem(id="w", data={"word": "hi"}), tmp_path / "out")
    assert outcome.ok and outcome.result == {"word": "HI!"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0-exclaim", "1-upper.py"]

    failed = chain.run(WorkItem(id="w", data={"word": "x", "boom": 1}), tmp_path / "out")
    assert not failed.ok and failed.reason == "chain[1] upper.py: exit code 1: boom in the command"


def test_a_chain_of_one_uses_the_item_dir(tmp_path: Path) -> None:
    chain = build_chain(WorkSpec(input="source", worker="unit-fail"), "s")
    outcome = chain.run(WorkItem(id="w"), tmp_path / "item")
    assert not outcome.ok and outcome.reason == "RuntimeError: cannot handle w"  # no chain prefix for one
    assert (tmp_path / "item").is_dir() and not list((tmp_path / "item").iterdir())


def test_unknown_worker_is_a_spec_error() -> None:
    work = WorkSpec(input="source", chain=[{"worker": "echo"}, {"worker": "missing"}])
    with pytest.raises(SpecError) as err:
        build_chain(work, "tag")
    assert err.value.path == "stages.tag.work.chain.1.worker"


PIPELINE = """\
apiVersion: batchmesh/v1
name: once
source: {path: .}
stages:
  shout: {work: {input: source, chain: [{worker: echo}, {command: %s}]}}
"""


def test_run_once_through_the_worker_contract(tmp_path: Path, upper: list[str]) -> None:
    """The manager's `process` executor runs chains as a command: `python -m services.workers.once`."""
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(PIPELINE % json.dumps(upper))
    argv = [sys.executable, "-m", "services.workers.once", "--pipeline", str(spec), "--stage", "shout"]
    env = {"PYTHONPATH": str(REPO)}
    ok = run_command(argv, WorkItem(id="w", data={"word": "hey"}), tmp_path / "ok", timeout=60, env=env)
    assert ok.ok and ok.result == {"word": "HEY"}
    bad = run_command(argv, WorkItem(id="w", data={"word": "x", "boom": 1}), tmp_path / "bad", timeout=60, env=env)
    assert not bad.ok and bad.reason == "exit code 1: chain[1] upper.py: exit code 1: boom in the command"


def test_run_once_in_process(tmp_path: Path, upper: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(PIPELINE % json.dumps(upper))
    item_file = tmp_path / "item.json"
    item_file.write_bytes(item_document(WorkItem(id="w", data={"word": "yo"})))
    assert run_once(load_pipeline(spec), "shout", item_file, tmp_path / "out") == 0
    assert json.loads(capsys.readouterr().out) == {"word": "YO"}
    assert run_once(load_pipeline(spec), "nope", item_file, tmp_path / "out") == 2
    item_file.write_text("{}")
    assert run_once(load_pipeline(spec), "shout", item_file, tmp_path / "out") == 2
