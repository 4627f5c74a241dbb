"""The broken-spec corpus (tests/specs/broken/*.yaml): every file -> `batchmesh validate` and `batchmesh run` exit 2
with exactly one line on stderr naming the bad field's path (or the file itself, for a file that is not a spec at
all), never a traceback. Each file says what is wrong and the path expected (`# expect: PATH`).

In-process through the CLI's `main` (cheap), and a few through a real `batchmesh` subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main
from services.core.spec import SpecError, load_pipeline
from services.core.spec_yaml import MAX_SPEC_BYTES

CORPUS_DIR = Path(__file__).resolve().parents[1] / "specs" / "broken"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
CANARY = Path("/tmp/batchmesh-canary-spec")  # 55-python-tag would create it if a tag were ever constructed


def expected_path(spec: Path) -> str:
    for line in spec.read_bytes().decode("utf-8", "replace").splitlines():
        if line.startswith("# expect: "):
            return line.removeprefix("# expect: ").strip()
    raise AssertionError(f"{spec.name} has no '# expect: PATH' line")


def check_one_line(stderr: str, spec: Path) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{spec.name}: expected one line, got:\n{stderr}"
    (line,) = lines
    assert line.startswith("batchmesh: "), line
    want = expected_path(spec)
    if want == "(file)":  # the file itself is not a spec: the line names the file
        assert f"{spec}: " in line, line
    else:  # "batchmesh: [invalid pipeline: ]PATH: reason"
        assert f": {want}: " in line, f"{spec.name}: expected the path {want!r} in {line!r}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory where the corpus's `source: {path: ./in}` exists, so only the seeded fault is reported."""
    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path)
    CANARY.unlink(missing_ok=True)
    return tmp_path


def call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # the preflight exits 2 itself
        return int(exc.code or 0)


def test_the_corpus_is_large_and_documented() -> None:
    assert len(CORPUS) >= 30
    for spec in CORPUS:
        text = spec.read_bytes().decode("utf-8", "replace")
        assert text.startswith("# ") and expected_path(spec)


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_validate_exits_2_naming_the_field(spec: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(["validate", str(spec)]) == 2
    check_one_line(capsys.readouterr().err, spec)
    assert not CANARY.exists()


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_run_exits_2_before_anything_starts(spec: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "out"
    assert call(["run", str(spec), "--out", str(out), "--timeout", "5"]) == 2
    check_one_line(capsys.readouterr().err, spec)
    assert not out.exists()  # nothing ran: no output directory, no roles
    assert not CANARY.exists()


SUBPROCESS = ["02-not-yaml", "07-yaml-bomb", "17-cycle", "36-unknown-worker", "55-python-tag", "56-not-utf8"]


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("stem", SUBPROCESS)
def test_through_a_real_process(stem: str, command: str, workdir: Path) -> None:
    spec = CORPUS_DIR / f"{stem}.yaml"
    env = {**os.environ, "BATCHMESH_LOG_JSON": "false"}
    argv = [sys.executable, "-m", "services.cli", command, str(spec)] + (["--out", "out"] if command == "run" else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    check_one_line(done.stderr, spec)
    assert not CANARY.exists()


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text("# padding\n" * (MAX_SPEC_BYTES // 10 + 1))
    with pytest.raises(SpecError) as caught:
        load_pipeline(spec)
    assert caught.value.path == str(spec) and "larger than" in caught.value.reason


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    """The duplicate-key and alias checks leave ordinary YAML reuse alone: a key a merge brings in may be
    overridden, and an anchor may be used many times."""
    spec = tmp_path / "ok.yaml"
    spec.write_text("apiVersion: batchmesh/v1\nname: reuse\nsource: {path: ./in}\n"
                    "stages:\n  a: {work: &w {input: source, worker: echo, timeout: 5s}}\n"
                    "  b: {work: {<<: *w, input: a, timeout: 9s}}\n  c: {work: {<<: *w, input: b}}\n")
    pipeline = load_pipeline(spec)
    assert [pipeline.stages[s].body.input for s in "abc"] == ["source", "a", "b"]
    assert [pipeline.stages[s].body.timeout for s in "abc"] == [5.0, 9.0, 5.0]
