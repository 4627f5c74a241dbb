"""`batchmesh run -v` shows the roles' logs live, among them a worker's stderr of an item that succeeded (kept in
the role log too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runs import ROOT


def test_run_verbose_shows_a_succeeding_workers_stderr(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.txt").write_text("x")
    spec = tmp_path / "p.yaml"
    spec.write_text("apiVersion: batchmesh/v1\nname: verbose\nsource: {path: ./in}\nstages:\n"
                    "  w: {work: {input: source, command: [python, -c, \"import sys; print('low on disk', "
                    "file=sys.stderr)\"]}}\n")
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp_path / "st")}
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(data), "--out",
                           str(tmp_path / "out"), "--quiet", "-v", "--timeout", "60"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a.txt: stderr of python:" in done.stderr and "low on disk" in done.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "st" / "logs" / "verbose").glob("worker-*.log"))
    assert "low on disk" in logs  # kept in the role log, verbose or not
