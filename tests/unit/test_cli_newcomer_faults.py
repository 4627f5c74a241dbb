"""What a newcomer trips over at the CLI (issue 10, faults 7 and 9): errors found before anything starts, one line
each and exit 2 (a missing --input, a command that cannot be found, a missing plugin file, an unknown dlq stage);
every spec error at once; a warning for a predicate that is not boolean on sampled items; --version; the exit
codes in the help. Each is a real `python -m services.cli` process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def batchmesh(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def spec(tmp: Path, body: str, name: str = "p.yaml") -> Path:
    path = tmp / name
    path.write_text("apiVersion: batchmesh/v1\n" + textwrap.dedent(body))
    return path


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


def test_version_and_exit_codes_in_help() -> None:
    done = batchmesh("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"batchmesh {version('batchmesh')}"
    assert "3 `run --timeout`" in batchmesh("--help").stdout.replace("\n", " ")


def test_run_with_a_missing_input_says_so_before_starting_anything(tmp_path: Path) -> None:
    path = spec(tmp_path, """\
        name: missing-input
        source: {path: ./in}
        stages: {a: {work: {input: source, worker: echo}}}
    """)
    began = time.monotonic()
    done = batchmesh("run", str(path), "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                     env={"BATCHMESH_DATA_DIR": str(tmp_path / "st")})
    assert time.monotonic() - began < 15
    assert done.returncode == 2
    no_traceback(done)
    assert done.stderr.strip().splitlines() == [
        f"batchmesh: --input: source directory {str(tmp_path / 'nope')!r} does not exist or is not a directory"]
    assert not (tmp_path / "st").exists()  # no Redis, no role started


def test_validate_names_every_missing_command_and_plugin(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = spec(tmp_path, """\
        name: missing-tools
        plugins: [nothere.py]
        source: {path: ./in}
        stages:
          a: {work: {input: source, command: [no-such-tool-xyz, --go]}}
          b: {work: {input: a, chain: [{command: [python, -c, pass]}, {command: [./missing.sh]}]}}
    """)
    done = batchmesh("validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    no_traceback(done)
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("batchmesh: plugins[0]: no such Python file 'nothere.py'")
    assert lines[1] == ("batchmesh: stages.a.work.command: stage 'a': command 'no-such-tool-xyz' not found "
                        "(not on PATH, not an executable file)")
    assert lines[2].startswith("batchmesh: stages.b.work.chain[1].command: stage 'b': command './missing.sh'")
    assert len(lines) == 3


def test_validate_reports_every_spec_error(tmp_path: Path) -> None:
    path = spec(tmp_path, """\
        name: Bad_Name
        source: {path: ./in, poll: soon}
        stages: {a: {work: {input: source, worker: echo, concurrency: 0}}}
    """)
    done = batchmesh("validate", str(path))
    assert done.returncode == 2
    no_traceback(done)
    for where in ("name:", "source.poll:", "stages.a.work.concurrency:"):
        assert where in done.stderr


def test_validate_warns_when_a_predicate_is_not_boolean_on_sampled_items(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_text("x")
    path = spec(tmp_path, """\
        name: predicate
        source: {path: ./in}
        stages:
          secret: {filter: {input: source, where: "!data.secret"}}
          fine: {filter: {input: secret, where: "data.size > `0`"}}
          a: {work: {input: fine, worker: echo}}
    """)
    done = batchmesh("validate", str(path), "--input", str(data))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("batchmesh: warning:")]
    assert len(warnings) == 1, done.stderr
    assert "stages.secret.filter.where" in warnings[0] and "3 of 3" in warnings[0]
    assert "`(!data).secret`" in warnings[0] and "`!(data.secret)`" in warnings[0]


def test_dlq_list_for_an_unknown_stage_is_an_error(tmp_path: Path) -> None:
    path = spec(tmp_path, """\
        name: dlq-stage
        source: {path: ./in}
        stages: {a: {work: {input: source, worker: echo}}, b: {work: {input: a, worker: echo}}}
    """)
    done = batchmesh("dlq", "list", str(path), "--stage", "nope", env={"BATCHMESH_DATA_DIR": str(tmp_path / "st")})
    assert done.returncode == 2
    no_traceback(done)
    assert "no stage 'nope'" in done.stderr and "(stages: a, b)" in done.stderr


def test_dlq_list_with_no_dead_letters_says_so_on_stderr(tmp_path: Path) -> None:
    path = spec(tmp_path, """\
        name: dlq-empty
        source: {path: ./in}
        stages: {a: {work: {input: source, worker: echo}}}
    """)
    env = {"BATCHMESH_DATA_DIR": str(tmp_path / "st")}
    for args, line in (((), "no dead letters in pipeline dlq-empty"),
                      (("--stage", "a"), "no dead letters in pipeline dlq-empty at stage a")):
        done = batchmesh("dlq", "list", str(path), *args, env=env)
        assert done.returncode == 0, done.stderr
        no_traceback(done)
        assert done.stdout == ""  # scripts parse JSON lines from stdout
        assert done.stderr.strip().splitlines()[-1] == line, done.stderr
