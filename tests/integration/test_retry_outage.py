"""A downstream outage of 3 s with max_deliveries 3 (issue 11; /work/shared/cases/reliability-cases.sh case 3), in a
real `batchmesh run` with the default retry settings: every item fails while the outage lasts and then finishes
(8/8 done, none dead-lettered), its deliveries spaced by the backoff, and the reduce after the work stage waits
for the retried items (its count is exactly 8: a barrier sees an item waiting for its retry as in flight)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
import os, time
from services.workers import worker

@worker("flaky", writes=False)
def flaky(item, output_dir):
    down = os.path.exists(os.environ["FLAKY_FLAG"])
    with open(os.environ["RUN_LOG"], "a") as f:
        f.write(f"{'fail' if down else 'ran'} {item['name']} {time.time()}\\n")
    if down:
        raise RuntimeError("downstream unavailable")
    return {"ok": True}
'''


def test_a_three_second_outage_costs_latency_not_dead_letters(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for i in range(1, 9):
        (tmp_path / "data" / f"f{i}").write_text("x")
    (tmp_path / "flaky.py").write_text(PLUGIN)
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": "outage", "plugins": [str(tmp_path / "flaky.py")],
            "source": {"type": "directory", "path": str(tmp_path / "data")},
            "defaults": {"max_deliveries": 3},
            "stages": {"work": {"work": {"input": "source", "worker": "flaky", "concurrency": 8}},
                       "total": {"reduce": {"input": "work", "fold": {"items": {"count": True}},
                                            "write": "total.json"}}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    flag, log = tmp_path / "outage", tmp_path / "ran.log"
    flag.write_text("")

    def end_outage() -> None:  # 3 s after the first failure, the downstream is back
        deadline = time.monotonic() + 120
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(3)
        flag.unlink()

    ender = threading.Thread(target=end_outage, daemon=True)
    ender.start()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "BATCHMESH_DATA_DIR": str(tmp_path / "st"),
           "RUN_LOG": str(log), "FLAKY_FLAG": str(flag)}
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", str(tmp_path / "p.yaml"), "--out",
                           str(tmp_path / "out"), "--quiet", "--timeout", "120"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=150)
    ender.join(5)
    assert done.returncode == 0, f"{done.returncode}\n{done.stderr[-3000:]}"
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(name for what, name, _ in lines if what == "ran") == [f"f{i}" for i in range(1, 9)]
    for i in range(1, 9):
        times = [float(t) for _, name, t in lines if name == f"f{i}"]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(times) >= 2 and all(g >= 1.5 * 0.95 for g in gaps), f"f{i}: deliveries {gaps} s apart"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dead_letters"] == []
    total = json.loads((tmp_path / "out" / "total.json").read_text())
    assert total["aggregate"]["items"] == 8 and total["failed_count"] == 0, total
