"""State from earlier runs, as `batchmesh` shows it (issue 10, faults 4 and 5), with real processes: every role of
`batchmesh run` its own process, on the session's embedded Redis (REDIS_URL: no server start per command), a
pipeline of its own per module (the first three tests go on from each other's state, in order; a run costs
seconds). A word count whose map dead-letters a poison file:

- a re-run over the same input says "5 listed, 5 already done, 0 new" and exits 0: the exit code is this run's,
  the older dead letter is reported apart;
- `batchmesh reset` refuses without --yes on a non-terminal stdin (exit 2, nothing deleted) and while the
  pipeline's consumers are alive (exit 1), else deletes every key: the next run processes everything anew;
- the map fixed, `dlq replay` says the reduce already fired and the item will be folded late; the next run
  rewrites report.json with the item folded exactly once and `"late": 1`, and `status` shows the late count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from runs import ROOT

WORKERS = '''
import os
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

from services.workers import worker

FIXED = Path(__file__).with_name("fixed")


@worker("count", writes=False)
def count(item, output_dir):
    time.sleep(float(os.environ.get("STATE_TEST_DELAY_S", "0")))
    text = Path(unquote(urlparse(item["data"]["uri"]).path)).read_text()
    if "poison" in text and not FIXED.exists():
        raise ValueError("poison pill")
    counts = Counter(text.split())
    return {"counts": dict(counts), "words": sum(counts.values())}
'''


def make_world(tmp_path: Path, redis_url: str) -> dict[str, object]:
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(4):
        (texts / f"f{i}.txt").write_text(f"apple banana apple w{i}")
    (texts / "bad.txt").write_text("poison cherry")
    (tmp_path / "workers.py").write_text(WORKERS)
    name = f"st{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(f"""apiVersion: batchmesh/v1
kind: Pipeline
name: {name}
plugins: [{tmp_path / 'workers.py'}]
defaults: {{max_deliveries: 1}}
source: {{type: directory, path: {texts}, glob: "*.txt"}}
stages:
  map:   {{work: {{input: source, worker: count}}}}
  total: {{reduce: {{input: map, fold: {{words: {{sum: data.counts}}, files: {{count: true}}}}, write: report.json}}}}
""")
    return {"tmp": tmp_path, "spec": spec, "name": name, "url": redis_url, "client": redis.Redis.from_url(redis_url)}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict[str, object]:
    return make_world(tmp_path_factory.mktemp("state"), redis_url)


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> dict[str, object]:
    return make_world(tmp_path, redis_url)


def env(world: dict[str, object], **extra: str) -> dict[str, str]:
    return {**os.environ, "BATCHMESH_DATA_DIR": str(world["tmp"] / "st"), "REDIS_URL": str(world["url"]), **extra}


def batchmesh(world: dict[str, object], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env(world), text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


def run(world: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return batchmesh(world, "run", str(world["spec"]), "--out", str(world["tmp"] / "out"), "--quiet",
                     "--timeout", "60")


def keys_of(world: dict[str, object]) -> set[bytes]:
    return set(world["client"].scan_iter(match=f"bm:{{{world['name']}}}:*", count=1000))


def report(world: dict[str, object]) -> dict[str, object]:
    return json.loads((world["tmp"] / "out" / "report.json").read_text())


def test_a_rerun_says_what_was_done_and_exits_on_this_runs_dead_letters(shared: dict[str, object]) -> None:
    world = shared
    first = run(world)
    assert first.returncode == 1, first.stderr[-3000:]  # the poison file was dead-lettered in this run
    assert "5 listed, 0 already done, 5 new" in first.stderr
    assert "1 dead-lettered in this run" in first.stderr and "older dead letter" not in first.stderr

    second = run(world)
    assert second.returncode == 0, second.stderr[-3000:]  # nothing failed in this run
    assert "5 listed, 5 already done, 0 new" in second.stderr
    assert "1 older dead letter(s) remain: `batchmesh dlq list`" in second.stderr
    assert "dead-lettered in this run" not in second.stderr
    assert report(world)["aggregate"]["files"] == 4  # the empty batch kept the result


def test_replay_after_the_reduce_fired_folds_the_item_late_and_rewrites_the_file(shared: dict[str, object]) -> None:
    world = shared  # the first test's state: two runs, one dead letter of the first batch
    fired = report(world)
    assert fired["failed"] == ["bad.txt"] and fired["aggregate"]["files"] == 4 and "late" not in fired
    assert "cherry" not in fired["aggregate"]["words"]

    (world["tmp"] / "fixed").touch()  # the map is fixed; the input is unchanged
    replayed = batchmesh(world, "dlq", "replay", str(world["spec"]))
    assert replayed.returncode == 0, replayed.stderr
    assert (f"1 item(s) of stage map replayed into batch {fired['batch']}; the reduce `total` already fired: they "
            f"will be folded as late items and report.json rewritten") in replayed.stderr
    assert "replayed 0 item(s)" in batchmesh(world, "dlq", "replay", str(world["spec"])).stderr  # nothing twice

    after = run(world)
    assert after.returncode == 0, after.stderr[-3000:]
    assert "5 listed, 5 already done, 0 new" in after.stderr and "dead letter" not in after.stderr
    assert ("reduce `total`: 1 late item(s) folded into a batch that had already fired: report.json rewritten with "
            "them") in after.stderr
    late = report(world)
    assert late["batch"] == fired["batch"] and late["late"] == 1 and late["failed"] == [] and late["done"] == 5
    assert late["aggregate"]["files"] == 5 and late["aggregate"]["words"] == {
        **fired["aggregate"]["words"], "poison": 1, "cherry": 1}  # folded exactly once
    status = json.loads(batchmesh(world, "status", str(world["spec"])).stdout)
    assert status["stages"]["total"]["late"] == 1
    assert batchmesh(world, "dlq", "list", str(world["spec"])).stdout == ""


def test_reset_asks_refuses_without_a_terminal_and_then_starts_over(shared: dict[str, object]) -> None:
    world = shared  # after the replay: done, nothing dead-lettered
    (world["tmp"] / "fixed").unlink()  # the poison pill is one again
    before = keys_of(world)
    assert len(before) > 10

    refused = batchmesh(world, "reset", str(world["spec"]))  # stdin is not a terminal, no --yes
    assert refused.returncode == 2 and "confirm with --yes" in refused.stderr, refused.stderr
    assert f"would delete {len(before)} key(s)" in refused.stderr
    assert keys_of(world) == before

    done = batchmesh(world, "reset", str(world["spec"]), "--yes")
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} key(s) removed" in done.stderr
    assert keys_of(world) == set()

    again = run(world)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "5 listed, 0 already done, 5 new" in again.stderr and "older dead letter" not in again.stderr
    assert "1 dead-lettered in this run" in again.stderr  # processed anew: the map ran on every file again
    anew = report(world)
    assert anew["aggregate"]["files"] == 4 and anew["items"] == 5 and "late" not in anew


def test_reset_is_refused_while_a_run_is_active(world: dict[str, object]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(world["spec"]), "--out",
                             str(world["tmp"] / "out"), "--quiet", "--timeout", "60"], cwd=ROOT,
                            env=env(world, STATE_TEST_DELAY_S="2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        alive = f"bm:{{{world['name']}}}:alive:map"
        deadline = time.monotonic() + 20
        while not world["client"].zcard(alive) or not world["client"].exists(f"bm:{{{world['name']}}}:version"):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start its workers"
            time.sleep(0.05)
        before = keys_of(world)
        refused = batchmesh(world, "reset", str(world["spec"]), "--yes")
        assert refused.returncode == 1, refused.stderr
        assert f"pipeline {world['name']!r} is in use: live consumers at map (1)" in refused.stderr
        assert keys_of(world) >= before  # nothing deleted
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
