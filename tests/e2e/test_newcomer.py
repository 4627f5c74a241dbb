"""The newcomer walk-through: the README's word-count commands from a fresh directory that is not the repository
(the spec named by its absolute path), each exiting 0 without a traceback, as a user types them — the
`batchmesh` console script of this environment, its own embedded Redis in the directory's `.batchmesh`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "wordcount" / "pipeline.yaml"
FILES = 24


def test_the_readme_word_count_from_a_fresh_directory(tmp_path: Path) -> None:
    began = time.monotonic()
    home = tmp_path / "newcomer"
    home.mkdir()
    bin_dir = Path(sys.executable).parent
    cli = shutil.which("batchmesh", path=str(bin_dir)) or "batchmesh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHMESH_") and k not in ("REDIS_URL",
                                                                                                "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])

    def step(*argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), cwd=home, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
        return done

    step(sys.executable, str(ROOT / "examples" / "wordcount" / "generate.py"), "texts", "--files", str(FILES),
         "--seed", "1")
    validated = step(cli, "validate", str(PIPELINE))
    assert "valid pipeline 'wordcount'" in validated.stdout
    step(cli, "run", str(PIPELINE), "--input", "texts", "--out", "out", "--quiet", "--timeout", "45")
    result = json.loads((home / "out" / "wordcount.json").read_text())
    assert result["final"] is True and result["aggregate"]["files"] == FILES
    status = json.loads(step(cli, "status", str(PIPELINE)).stdout)
    assert status["pipeline"] == "wordcount" and status["counts"]["done"] >= FILES
    assert step(cli, "dlq", "list", str(PIPELINE)).stdout.strip() == ""  # no dead letters
    assert (home / "texts").is_dir() and (home / ".batchmesh").is_dir()  # everything in the newcomer's directory
    assert time.monotonic() - began < 60
