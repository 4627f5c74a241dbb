"""The pipeline spec: a valid one loads; each kind of mistake is a SpecError whose path names the bad field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.core.spec import SpecError, load_pipeline, parse_duration

VALID = {
    "apiVersion": "batchmesh/v1",
    "kind": "Pipeline",
    "name": "images",
    "source": {"type": "directory", "path": "./data", "glob": "*.jpg", "poll": "500ms", "filter": "size > `10`"},
    "defaults": {"max_deliveries": 5, "visibility_timeout": "2m"},
    "stages": {
        "resize": {"work": {"input": "source", "command": ["convert", "{in}"], "timeout": "1m", "replicas": 3}},
        "tag": {"work": {"input": "resize", "chain": [{"worker": "detect"}, {"command": ["tagger"]}]}},
        "count": {"work": {"input": "tag", "worker": "count"}},
    },
}


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def spec_error(tmp_path: Path, change: dict) -> SpecError:
    spec = copy.deepcopy(VALID)
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value
    with pytest.raises(SpecError) as raised:
        load_pipeline(write(tmp_path, spec))
    return raised.value


def test_a_valid_spec_loads(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, VALID))
    assert p.name == "images" and list(p.stages) == ["resize", "tag", "count"]
    assert p.source.poll == 0.5 and p.defaults.visibility_timeout == 120
    resize = p.stages["resize"].body
    assert resize.timeout == 60 and (resize.replicas.min, resize.replicas.max) == (3, 3)
    assert [a.worker or a.command for a in p.stages["tag"].body.adapters] == ["detect", ["tagger"]]
    assert p.readers("resize") == ["tag"] and p.sinks() == ["count"]


def test_unknown_stream(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"stages.tag.work.input": "nowhere"})
    assert err.path == "stages.tag.work.input" and "nowhere" in err.reason


def test_cycle(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"stages": {"a": {"work": {"input": "b", "worker": "x"}},
                                           "b": {"work": {"input": "a", "worker": "x"}}}})
    assert err.path in ("stages.a.work.input", "stages.b.work.input")
    assert "cycle" in err.reason and "a -> b -> a" in err.reason


def test_a_stage_reading_itself_is_a_cycle(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"stages.count.work.input": "count"})
    assert err.path == "stages.count.work.input" and "cycle" in err.reason


@pytest.mark.parametrize(("field", "value"), [
    ("stages.resize.work.timeout", "5 minutes"),
    ("stages.resize.work.timeout", "0s"),
    ("source.poll", "-1"),
    ("source.poll", "0s"),
    ("defaults.visibility_timeout", "soon"),
    ("defaults.visibility_timeout", "0ms"),
])
def test_bad_duration(tmp_path: Path, field: str, value: str) -> None:
    assert spec_error(tmp_path, {field: value}).path == field


def test_bad_pipeline_name(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"name": "My_Pipeline"})
    assert err.path == "name"


@pytest.mark.parametrize("name", ["Resize", "source", "a_b", "-x"])
def test_bad_stage_name(tmp_path: Path, name: str) -> None:
    err = spec_error(tmp_path, {"stages": {name: {"work": {"input": "source", "worker": "x"}}}})
    assert err.path == f"stages.{name}" and name in err.reason


def test_two_worker_kinds_in_one_stage(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"stages.count.work.command": ["wc"]})
    assert err.path == "stages.count.work" and "exactly one" in err.reason


def test_two_worker_kinds_in_one_chain_link(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"stages.tag.work.chain": [{"worker": "a", "command": ["b"]}]})
    assert err.path == "stages.tag.work.chain.0" and "exactly one" in err.reason


def test_two_stage_kinds(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"stages.count.shard": {"input": "tag", "key": "id", "shards": 2}})
    assert err.path in ("stages.count", "stages.count.shard"), "the stage (or its extra kind) is named"


def test_bad_jmespath_filter(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"source.filter": "size >"})
    assert err.path == "source.filter" and "JMESPath" in err.reason


def test_unknown_field(tmp_path: Path) -> None:
    assert spec_error(tmp_path, {"stages.count.work.wroker": "x"}).path == "stages.count.work.wroker"


def test_not_a_mapping_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="not a mapping"):
        load_pipeline(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_pipeline(tmp_path / "missing.yaml")


def test_overrides_replace_fields(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, VALID), {"source.path": "/elsewhere"})
    assert p.source.path == "/elsewhere"
    with pytest.raises(SpecError) as raised:
        load_pipeline(write(tmp_path, VALID), {"source.path.deeper": "x"})
    assert raised.value.path == "source.path"


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1h", 3600), (7, 7), ("3", 3)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds
