"""A pending entry deleted from the stream while its consumer was dead (issue 11): in a real `batchmesh run`, the
worker holding item `slow` is SIGKILLed and that entry XDELed. The restarted worker's reclaim finds the entry gone,
puts the item back from the held index, and the run finishes with every item done (it used to stay `running` for
ever: this run and every later one over the same input hung until --timeout). A second run over the same input
finishes at once, nothing new."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml
from runs import ROOT

PLUGIN = '''
import os, time
from services.workers import worker

@worker("slowpoke", writes=False)
def slowpoke(item, output_dir):
    log = os.environ["RUN_LOG"]
    first = not (os.path.exists(log) and "slow " in open(log).read())
    with open(log, "a") as f:
        f.write(f"{item['name']} {os.getpid()}\\n")
    if item["name"] == "slow" and first:
        time.sleep(3600)  # held until the test kills this process
    return {"ok": item["name"]}
'''


def _run(tmp: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(tmp / "p.yaml"), "--out",
                             str(tmp / "out"), "--quiet", "--timeout", "90"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_an_entry_deleted_while_its_consumer_was_dead_is_redone_and_runs_do_not_hang(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("slow", "a", "b"):
        (tmp_path / "in" / name).write_text(name)
    (tmp_path / "plugin.py").write_text(PLUGIN)
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": "lost", "plugins": [str(tmp_path / "plugin.py")],
            "source": {"type": "directory", "path": str(tmp_path / "in")},
            "defaults": {"max_deliveries": 3, "visibility_timeout": "1s", "retry": {"backoff": "100ms"}},
            "stages": {"w": {"work": {"input": "source", "worker": "slowpoke"}},
                       "n": {"reduce": {"input": "w", "fold": {"items": {"count": True}}, "write": "n.json"}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    log = tmp_path / "ran.log"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "BATCHMESH_DATA_DIR": str(tmp_path / "st"),
           "RUN_LOG": str(log)}
    run = _run(tmp_path, env)
    try:
        deadline, pid = time.monotonic() + 60, None
        while pid is None and time.monotonic() < deadline and run.poll() is None:
            lines = log.read_text().split("\n") if log.exists() else []
            pid = next((int(line.split()[1]) for line in lines if line.startswith("slow ")), None)
            time.sleep(0.02)
        assert pid is not None, "the slow item never started"
        client = redis.Redis.from_url((tmp_path / "st" / "redis" / "redis.url").read_text().strip())
        stream = "bm:{lost}:s:source"
        os.kill(pid, signal.SIGKILL)  # the consumer is dead, its entries pending
        pending = [row["message_id"] for row in client.xpending_range(stream, "w", "-", "+", 100)]
        held = [e for e in pending if b'"id":"slow"' in client.xrange(stream, e, e)[0][1][b"item"]]
        assert len(held) == 1, pending
        assert client.xdel(stream, held[0]) == 1
        out, err = run.communicate(timeout=100)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, f"{run.returncode}\n{err[-3000:]}"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dead_letters"] == [], manifest["dead_letters"]
    assert [line.split()[0] for line in log.read_text().splitlines()].count("slow") == 2, "slow was redone"
    assert json.loads((tmp_path / "out" / "n.json").read_text())["aggregate"]["items"] == 3, "the reduce heard of it"
    again = _run(tmp_path, env)
    _, err = again.communicate(timeout=100)
    assert again.returncode == 0, f"the second run: {again.returncode}\n{err[-3000:]}"
    assert "0 new" in err, err[-2000:]
