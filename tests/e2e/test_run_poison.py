"""Poison items that kill their worker process (issue 11, first case): an in-process worker calling os._exit(139)
on 3 of 63 items, max_deliveries 3. The supervisor restarts the worker with a backoff instead of giving up, the
restarted worker reclaims entries one at a time (so only the poison item's delivery count goes up), each poison
item reaches max_deliveries and is dead-lettered with the reason, and every good item ends with one result.
(The supervisor's give-up rule for a role that crashes at start-up: tests/integration/test_retry_supervisor.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from runs import ROOT

POISON = ["item07", "item31", "item55"]

PLUGIN = '''
import os
from services.workers import worker

@worker("poison", writes=False)
def poison(item, output_dir):
    with open(os.environ["RUN_LOG"], "a") as f:
        f.write(item["name"] + "\\n")
    if item["name"] in os.environ["POISON"].split(","):
        os._exit(139)  # the worker process dies with the item in hand: nothing is committed
    return {"ok": item["name"]}
'''

def _run(tmp: Path, plugin: str, worker: str, items: int, env: dict[str, str], timeout: int = 150
         ) -> tuple[subprocess.CompletedProcess[str], float]:
    (tmp / "in").mkdir()
    for i in range(items):
        (tmp / "in" / f"item{i:02d}").write_text(str(i))
    (tmp / "plugin.py").write_text(plugin)
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": "poison", "plugins": [str(tmp / "plugin.py")],
            "source": {"type": "directory", "path": str(tmp / "in")},
            "defaults": {"max_deliveries": 3, "visibility_timeout": "500ms", "retry": {"backoff": "100ms"}},
            "stages": {"w": {"work": {"input": "source", "worker": worker}}}}
    (tmp / "p.yaml").write_text(yaml.safe_dump(spec))
    run_env = {**env, "BATCHMESH_DATA_DIR": str(tmp / "st"), "RUN_LOG": str(tmp / "ran.log"),
               "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", str(tmp / "p.yaml"), "--out",
                           str(tmp / "out"), "--quiet", "--timeout", str(timeout)], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=timeout + 30)
    return done, time.monotonic() - began


def test_poison_items_that_kill_the_worker_are_dead_lettered_and_the_rest_finish(tmp_path: Path) -> None:
    done, _ = _run(tmp_path, PLUGIN, "poison", 63, {"POISON": ",".join(POISON)})
    assert done.returncode == 1, f"dead letters make exit code 1: {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "keep crashing" not in done.stderr, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dead = {d["item"]: d for d in manifest["dead_letters"]}
    assert sorted(dead) == POISON, manifest["dead_letters"]
    for d in dead.values():
        assert d["deliveries"] > 3 and "without acknowledgement" in d["reason"], d
    good = {f"item{i:02d}" for i in range(63)} - set(POISON)
    assert set(manifest["results"]) == good, sorted(good - set(manifest["results"]))
    ran = (tmp_path / "ran.log").read_text().split()
    for name in POISON:  # a delivery counts even if its worker died (of another poison item) before running it
        assert 1 <= ran.count(name) <= 3, f"{name} ran {ran.count(name)} times; max_deliveries is 3"
    assert set(ran) == good | set(POISON)
