"""A role SIGKILLed while `batchmesh run` is starting (found by the handed chaos case: its first kill, 4 s in, hit
the source before it was healthy on a loaded machine): the run restarts it like any crashed role, instead of
giving up at once with "did not become healthy" (a traceback, exit 1, nothing processed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.chaos import ROOT, _role_env, generate
from bench.role_procs import role_processes

SPEC = """\
apiVersion: batchmesh/v1
name: startup
source: {type: jsonl, path: ./items.jsonl}
stages:
  work: {work: {input: source, worker: noop}}
"""


def _source_of(run_pid: int) -> int | None:
    return next((pid for pid, rest in role_processes(run_pid).items() if rest[:1] == ["source"]), None)


@pytest.mark.timeout(120)
def test_a_source_killed_before_it_is_healthy_is_restarted(tmp_path: Path) -> None:
    items = generate(tmp_path / "items.jsonl", 50, 1)
    (tmp_path / "startup.yaml").write_text(SPEC)  # three roles: source, manager, one worker
    run = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(tmp_path / "startup.yaml"), "--input",
                            str(items), "--out", str(tmp_path / "out"), "--quiet", "--timeout", "90"], cwd=ROOT,
                           env=_role_env(tmp_path / "state"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed, deadline = 0, time.monotonic() + 30
    while killed < 2 and time.monotonic() < deadline and run.poll() is None:  # twice: at start and the restart
        pid = _source_of(run.pid)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # well before it serves /healthz: it is still importing
            killed += 1
            while _source_of(run.pid) == pid:
                time.sleep(0.01)
        time.sleep(0.01)
    out, _ = run.communicate(timeout=110)
    text = out.decode(errors="replace")
    assert killed == 2, text[-2000:]
    assert run.returncode == 0, text[-2000:]
    assert "did not become healthy" not in text and "Traceback" not in text, text[-2000:]
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["results"]) == 50  # every item done


@pytest.mark.timeout(120)
def test_a_source_that_cannot_start_ends_the_run_with_one_line(tmp_path: Path) -> None:
    """Its error exits (here: an unreadable token file, exit 2) are counted; after STARTUP_RESTARTS the run says
    which role, its exit code and last log line, and exits 1, without a traceback."""
    items = generate(tmp_path / "items.jsonl", 5, 1)
    (tmp_path / "startup.yaml").write_text(SPEC)
    env = {**_role_env(tmp_path / "state"), "BATCHMESH_SOURCE_TOKEN_FILE": str(tmp_path / "missing-token")}
    run = subprocess.run([sys.executable, "-m", "services.cli", "run", str(tmp_path / "startup.yaml"), "--input",
                          str(items), "--out", str(tmp_path / "out"), "--quiet", "--timeout", "90"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=110)
    errors = [line for line in run.stderr.splitlines() if line.startswith("batchmesh:")]
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and len(errors) == 1, run.stderr[-2000:]
    assert "source: exited with code 2" in errors[0] and "missing-token" in errors[0], errors
