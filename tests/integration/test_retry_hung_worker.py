"""The stage timeout for in-process workers (services/workers/watchdog.py), with a real `batchmesh worker` process:
a function that hangs past `timeout` makes the worker exit (code 70) with the entry still pending, uncommitted,
so it is reclaimed and — hanging every time — dead-lettered after max_deliveries like an item that kills its
worker. A command chain has no watchdog: its commands are killed at the timeout instead."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from services.core import Keys, Settings, WorkItem
from services.workers.watchdog import EXIT_HUNG

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
import time
from services.workers import worker

@worker("hangs", writes=False)
def hangs(item, output_dir):
    time.sleep(3600)
'''


@pytest.mark.one_backend
def test_a_hung_in_process_worker_exits_leaving_its_entry_pending(redis_url: str, client: redis.Redis,
                                                                  settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    spec = {"apiVersion": "batchmesh/v1", "name": settings.pipeline, "plugins": [str(tmp_path / "plugin.py")],
            "source": {"path": str(tmp_path)},
            "stages": {"w": {"work": {"input": "source", "worker": "hangs", "timeout": "1s"}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    keys = Keys(settings.pipeline)
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    client.xadd(keys.stream("source"), WorkItem(id="stuck", batch="b").encode())
    env = {**os.environ, "REDIS_URL": redis_url, "BATCHMESH_OUT_DIR": str(tmp_path / "out")}
    began = time.monotonic()
    worker = subprocess.run([sys.executable, "-m", "services.cli", "worker", "--pipeline", str(tmp_path / "p.yaml"),
                             "--stage", "w"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert worker.returncode == EXIT_HUNG, f"{worker.returncode}\n{worker.stderr[-2000:]}"
    assert "exceeded the stage timeout" in worker.stderr and "stuck" in worker.stderr
    assert time.monotonic() - began < 30
    assert client.xpending(keys.stream("source"), "w")["pending"] == 1, "uncommitted: reclaimed, then capped"
