"""The CLI's contract: a bad spec exits 2 naming the bad field; a good one validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """\
apiVersion: batchmesh/v1
kind: Pipeline
name: demo
source: {type: directory, path: ./data}
stages:
  work-it: {work: {input: source, worker: noop}}
"""


def batchmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=60)


def test_validate_accepts_a_good_spec(tmp_path: Path) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text(GOOD)
    done = batchmesh("validate", str(spec))
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "work-it (work)" in done.stdout


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("input: source", "input: nowhere"), "stages.work-it.work.input"),
        (("worker: noop", "worker: noop, command: [x]"), "stages.work-it.work"),
        (("apiVersion: batchmesh/v1", "apiVersion: batchmesh/v9"), "apiVersion"),
        (("work-it:", "Work_It:"), "stages"),
        (("{type: directory, path: ./data}", "{type: ftp, path: ./data}"), "source.type"),
        (("{type: directory, path: ./data}", "{type: directory, path: ./d, poll: soon}"), "source.poll"),
    ],
)
def test_validate_rejects_a_bad_spec_with_exit_2_and_the_field(tmp_path: Path, change: tuple[str, str],
                                                               field: str) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text(GOOD.replace(*change))
    done = batchmesh("validate", str(spec))
    assert done.returncode == 2
    assert field in done.stderr, done.stderr


def test_validate_rejects_a_cycle(tmp_path: Path) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text(GOOD + "  a: {work: {input: b, worker: noop}}\n  b: {work: {input: a, worker: noop}}\n")
    done = batchmesh("validate", str(spec))
    assert done.returncode == 2
    assert "cycle" in done.stderr


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = batchmesh("validate", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "cannot read" in done.stderr
