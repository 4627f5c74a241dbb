"""Two `batchmesh run`s at the same moment on one data directory (BATCHMESH_DATA_DIR), no REDIS_URL: the word count
and the log report. They share one embedded Redis (core.redis_lease): only one redis-server ever starts on its
files, the run that started it ending first does not stop it under the other, both results are exact, and Redis
is stopped after the last run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runs import ROOT
from test_run_wordcount import EXAMPLE, counted, generate, log_reference


def _run(tmp: Path, spec: str, source: Path, out: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "st")}
    env.pop("REDIS_URL", None)
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(EXAMPLE / spec), "--input", str(source),
                             "--out", str(tmp / out), "--quiet", "--timeout", "120"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _servers(data: Path) -> int:
    n = 0
    for proc in Path("/proc").iterdir():
        try:  # redis-server rewrites its argv ("redis-server host:port") and runs in its --dir
            cmdline, cwd = (proc / "cmdline").read_bytes(), os.readlink(proc / "cwd")
        except OSError:
            continue
        n += b"redis-server" in cmdline and cwd == str(data)
    return n


def test_two_runs_on_one_data_dir_both_finish_exactly(tmp_path: Path) -> None:
    texts = generate("generate.py", tmp_path / "texts", files=40)
    logs = generate("generate_logs.py", tmp_path / "logs", files=12)
    # Started together: whichever starts the embedded Redis, the other attaches, and the one ending first (the
    # shorter log report, usually) must not stop it under the other.
    runs = [_run(tmp_path, "pipeline.yaml", texts, "words"), _run(tmp_path, "logs.yaml", logs, "logs")]
    data = (tmp_path / "st" / "redis").resolve()
    while runs[1].poll() is None:  # never two redis-servers on the same files
        assert _servers(data) <= 1
        time.sleep(0.05)
    for run in runs:
        _, err = run.communicate(timeout=150)
        assert run.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "generator didn't stop" not in err, err[-3000:]

    words = json.loads((tmp_path / "words" / "wordcount.json").read_text())
    assert words["final"] is True and words["aggregate"]["words"] == dict(counted(texts))
    report = json.loads((tmp_path / "logs" / "logreport.json").read_text())
    assert report["final"] is True and report["aggregate"] == {**log_reference(logs), "files": 12}

    starts = (data / "redis.log").read_text().count("Redis is starting")
    assert starts == 1, f"one redis-server for both runs, not {starts}"
    deadline = time.monotonic() + 5
    while _servers(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _servers(data) == 0 and not (data / "redis.url").exists(), "stopped after the last run"
