"""`validate` reports every error of a spec, not only the first; plugin files and command paths relative to the
spec file work from any working directory (spec-relative first, then as written: the working directory)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from services.core.spec import SpecError, load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_every_field_error_is_reported(tmp_path: Path) -> None:
    spec = write(tmp_path / "p.yaml", """\
        apiVersion: batchmesh/v1
        name: Bad_Name
        source: {path: ./in, poll: soon}
        stages:
          a: {work: {input: source, worker: echo, concurrency: 0}}
    """)
    with pytest.raises(SpecError) as caught:
        load_pipeline(spec)
    paths = [where for where, _ in caught.value.errors]
    assert paths == ["name", "source.poll", "stages.a.work.concurrency"]
    assert str(caught.value).startswith("3 errors:") and "source.poll: not a duration" in str(caught.value)
    assert caught.value.path == "name"  # the first, as before


def test_every_graph_error_is_reported(tmp_path: Path) -> None:
    spec = write(tmp_path / "p.yaml", """\
        apiVersion: batchmesh/v1
        name: graph
        source: {path: ./in}
        stages:
          a: {work: {input: nowhere, worker: echo}}
          b: {work: {input: elsewhere, worker: echo}}
          c: {copy: {input: source, to: [x, y]}}
    """)
    with pytest.raises(SpecError) as caught:
        load_pipeline(spec)
    assert sorted(where for where, _ in caught.value.errors) == [
        "stages.a.work.input", "stages.b.work.input", "stages.c.copy", "stages.c.copy"]


def test_spec_relative_paths_resolve_against_the_spec_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "plugin.py").write_text("")
    (project / "tool.py").write_text("")
    spec = write(project / "pipeline.yaml", """\
        apiVersion: batchmesh/v1
        name: rel
        plugins: [plugin.py, some.module, missing.py]
        source: {path: ./in}
        stages:
          a: {work: {input: source, command: [python, tool.py, --flag, data.txt]}}
          b: {work: {input: a, chain: [{command: [python, tool.py]}, {worker: echo}]}}
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pipeline = load_pipeline(spec)
    assert pipeline.plugins == [str(project / "plugin.py"), "some.module", "missing.py"]
    assert pipeline.stages["a"].body.command == ["python", str(project / "tool.py"), "--flag", "data.txt"]
    assert pipeline.stages["b"].body.chain[0].command == ["python", str(project / "tool.py")]


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_the_examples_load_from_any_directory(cwd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT if cwd == "root" else tmp_path)
    pipeline = load_pipeline(ROOT / "examples" / "wordcount" / "pipeline.yaml")
    assert pipeline.plugins == [str(ROOT / "examples" / "wordcount" / "workers.py")]  # under a parent of the spec
    thumbs = load_pipeline(ROOT / "examples" / "thumbnailer" / "pipeline.yaml")
    assert thumbs.stages["thumbnails"].body.command == ["python", str(ROOT / "examples/thumbnailer/thumbnail.py")]


def test_a_copied_spec_still_finds_repository_paths_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "pipeline.yaml"
    copy.write_text((ROOT / "examples" / "wordcount" / "pipeline.yaml").read_text())
    monkeypatch.chdir(ROOT)
    assert load_pipeline(copy).plugins == ["examples/wordcount/workers.py"]  # as written: the cwd's


def test_single_names_are_not_looked_for_in_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tool.py").write_text("")
    (tmp_path / "sub").mkdir()
    spec = write(tmp_path / "sub" / "p.yaml", """\
        apiVersion: batchmesh/v1
        name: parents
        source: {path: ./in}
        stages:
          a: {work: {input: source, command: [python, tool.py, sub/p.yaml]}}
    """)
    monkeypatch.chdir(tmp_path / "sub")
    assert load_pipeline(spec).stages["a"].body.command == ["python", "tool.py", str(tmp_path / "sub" / "p.yaml")]


def test_cwd_relative_paths_still_work_and_docker_commands_stay_as_written(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "tools").mkdir(parents=True)
    (work / "tools" / "w.py").write_text("")
    (tmp_path / "specs").mkdir()
    spec = write(tmp_path / "specs" / "p.yaml", """\
        apiVersion: batchmesh/v1
        name: cwdrel
        plugins: [tools/w.py]
        source: {path: ./in}
        stages:
          a: {work: {input: source, command: [python, tools/w.py]}}
          b: {work: {input: a, command: [python, p.yaml], executor: docker, container: {image: x}}}
    """)
    monkeypatch.chdir(work)
    pipeline = load_pipeline(spec)
    assert pipeline.plugins == ["tools/w.py"]  # not under the spec's directory nor its parents: the cwd's
    assert pipeline.stages["a"].body.command == ["python", "tools/w.py"]
    assert pipeline.stages["b"].body.command == ["python", "p.yaml"]  # runs in its image
