"""Barrier stages in the pipeline spec: a bad fold, and a graph where some item would never reach a join or
reduce (a filter or splitter upstream, a shard output going elsewhere), is a SpecError naming the bad field; a
barrier's own output may go unread."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.core.spec import Pipeline, SpecError, load_pipeline
from services.core.spec_barriers import FoldSpec

BASE: dict[str, Any] = {"apiVersion": "batchmesh/v1", "name": "p", "source": {"path": "."}}
WORK = {"work": {"input": "source", "worker": "noop"}}


def pipeline(tmp_path: Path, stages: dict[str, Any]) -> Pipeline:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**copy.deepcopy(BASE), "stages": stages}, sort_keys=False))
    return load_pipeline(path)


def spec_error(tmp_path: Path, stages: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as raised:
        pipeline(tmp_path, stages)
    return raised.value


def reduce_with(fold: dict[str, Any]) -> dict[str, Any]:
    return {"map": WORK, "totals": {"reduce": {"input": "map", "fold": fold}}}


# -- folds ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fold", "reason"), [
    ({"count": True, "sum": "data.n"}, "exactly one operator"),
    ({"sum": "data.n", "histogram": "data.tag"}, "exactly one operator"),
    ({}, "exactly one operator"),
    ({"count": False}, "exactly one operator"),  # count: false is no operator at all
    ({"sum": "data.n", "buckets": [0, 1]}, "histogram only"),
    ({"count": True, "buckets": [0, 1]}, "histogram only"),
    ({"histogram": "data.n", "buckets": [2, 1]}, "strictly ascending"),
    ({"histogram": "data.n", "buckets": [1, 1, 2]}, "strictly ascending"),
    ({"histogram": "data.n", "buckets": []}, "at least 1"),
    ({"sum": "data.n +"}, "bad expression"),
    ({"histogram": "nosuch(data.n)"}, "unknown function"),
    ({"sum": "data.n", "avg": "data.n"}, "Extra inputs"),
])
def test_a_bad_fold_names_the_aggregate(tmp_path: Path, fold: dict[str, Any], reason: str) -> None:
    err = spec_error(tmp_path, reduce_with({"bytes": fold}))
    assert err.path.startswith("stages.totals.reduce.fold.bytes"), err.path
    assert reason in err.reason, err.reason


def test_a_reduce_needs_a_fold_and_a_safe_name(tmp_path: Path) -> None:
    err = spec_error(tmp_path, reduce_with({}))
    assert err.path == "stages.totals.reduce.fold"
    err = spec_error(tmp_path, reduce_with({"a\x1fb": {"count": True}}))
    assert err.path == "stages.totals.reduce.fold" and "bad aggregate name" in err.reason


@pytest.mark.parametrize(("field", "value"), [("top", 0), ("write", "../escape.json"), ("write", "/abs.json"),
                                              ("every", "soon"), ("every", 0)])
def test_bad_reduce_options(tmp_path: Path, field: str, value: Any) -> None:
    stages = reduce_with({"n": {"count": True}})
    stages["totals"]["reduce"][field] = value
    assert spec_error(tmp_path, stages).path == f"stages.totals.reduce.{field}"


def test_bad_join_emit(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"map": WORK, "gate": {"join": {"input": "map", "emit": "everything"}}})
    assert err.path == "stages.gate.join.emit"


def test_good_folds_and_their_operator() -> None:
    assert FoldSpec(count=True).operator == "count"
    assert FoldSpec(count="data.n > `2`").operator == "count"
    assert FoldSpec(sum="data.n").operator == "sum"
    assert FoldSpec(histogram="data.n", buckets=[-1, 0, 2.5]).operator == "histogram"


def test_a_reduce_spec_loads(tmp_path: Path) -> None:
    p = pipeline(tmp_path, reduce_with({"files": {"count": True}, "sizes": {"histogram": "data.n",
                                                                             "buckets": [0, 10]}}))
    body = p.stages["totals"].body
    assert body.kind == "reduce" and body.every == 1.0 and body.fold["sizes"].buckets == [0, 10]
    p = pipeline(tmp_path, {**reduce_with({"n": {"count": True}}), "gate": {"join": {"input": "map"}}})
    assert p.stages["totals"].body.every == 1.0 and p.stages["gate"].body.emit == "event"
    stages = reduce_with({"n": {"count": True}})
    stages["totals"]["reduce"]["every"] = "250ms"
    assert pipeline(tmp_path, stages).stages["totals"].body.every == 0.25


# -- what may sit upstream of a barrier --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["join", "reduce"])
def test_a_filter_upstream_of_a_barrier_is_refused(tmp_path: Path, kind: str) -> None:
    barrier = {"input": "map"} if kind == "join" else {"input": "map", "fold": {"n": {"count": True}}}
    err = spec_error(tmp_path, {"keep": {"filter": {"input": "source", "where": "data.n > `1`"}},
                                "map": {"work": {"input": "keep", "worker": "noop"}},
                                "gate": {kind: barrier}})
    assert err.path == f"stages.gate.{kind}.input"
    assert "filter stage 'keep'" in err.reason


def test_a_filter_directly_before_a_barrier_is_refused(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"map": WORK, "keep": {"filter": {"input": "map", "where": "data.ok"}},
                                "gate": {"join": {"input": "keep"}}})
    assert err.path == "stages.gate.join.input" and "'keep'" in err.reason


def test_a_split_upstream_of_a_barrier_is_refused_even_when_every_route_reaches_it(tmp_path: Path) -> None:
    """A splitter never drops, but the barrier would still need both routes: refused all the same (the spec's
    rule is simple: put it after the barrier)."""
    err = spec_error(tmp_path, {
        "route": {"split": {"input": "source", "by": "data.kind", "routes": {"a": "one"}, "default": "other"}},
        "one": {"work": {"input": "route.one", "worker": "noop"}},
        "other": {"work": {"input": "route.other", "worker": "noop"}},
        "gate": {"join": {"input": "one"}}})
    assert err.path == "stages.gate.join.input" and "split stage 'route'" in err.reason


def test_a_filter_or_split_after_a_barrier_is_fine(tmp_path: Path) -> None:
    pipeline(tmp_path, {"map": WORK, "gate": {"join": {"input": "map", "emit": "items"}},
                        "keep": {"filter": {"input": "gate", "where": "data.ok"}},
                        "route": {"split": {"input": "keep", "by": "data.kind", "default": "rest"}},
                        "last": {"work": {"input": "route.rest", "worker": "noop"}}})


def test_a_shard_output_not_reaching_the_barrier_is_refused(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"split": {"shard": {"input": "source", "key": "name", "shards": 2}},
                                "map-0": {"work": {"input": "split.0", "worker": "noop"}},
                                "map-1": {"work": {"input": "split.1", "worker": "noop"}},
                                "gate": {"join": {"input": "map-0"}}})
    assert err.path == "stages.gate.join.input"
    assert "split.1" in err.reason and "'split'" in err.reason


def test_a_reducer_per_shard_without_merging_the_partials_is_refused(tmp_path: Path) -> None:
    fold = {"n": {"count": True}}
    err = spec_error(tmp_path, {"split": {"shard": {"input": "source", "key": "name", "shards": 2}},
                                "part-0": {"reduce": {"input": "split.0", "fold": fold}},
                                "part-1": {"reduce": {"input": "split.1", "fold": fold}}})
    assert err.path == "stages.part-0.reduce.input" and "split.1" in err.reason


def test_shards_merged_before_the_barrier_or_a_reducer_per_shard_merged_after_are_fine(tmp_path: Path) -> None:
    shard = {"split": {"shard": {"input": "source", "key": "name", "shards": 2}}}
    p = pipeline(tmp_path, {**shard, "all": {"merge": {"inputs": ["split.0", "split.1"]}},
                            "gate": {"join": {"input": "all"}}})
    assert p.barrier_sources("gate") == []
    fold = {"n": {"count": True}}
    p = pipeline(tmp_path, {**shard, "part-0": {"reduce": {"input": "split.0", "fold": fold}},
                            "part-1": {"reduce": {"input": "split.1", "fold": fold}},
                            "parts": {"merge": {"inputs": ["part-0", "part-1"]}},
                            "total": {"reduce": {"input": "parts", "fold": {"n": {"sum": "data.aggregate.n"}}}}})
    assert p.barrier_sources("total") == ["part-0", "part-1"]
    assert p.barrier_siblings("part-0") == ["part-1"] and p.barrier_siblings("part-1") == ["part-0"]
    assert p.barrier_siblings("total") == []


def test_a_copy_upstream_of_a_barrier_is_fine_when_its_branch_reaches_it(tmp_path: Path) -> None:
    pipeline(tmp_path, {"fan": {"copy": {"input": "source", "to": ["a", "b"]}},
                        "a": {"work": {"input": "fan.a", "worker": "noop"}},
                        "b": {"work": {"input": "fan.b", "worker": "noop"}},
                        "gate": {"join": {"input": "a"}}})


def test_a_filter_between_partial_reducers_and_the_total_is_refused(tmp_path: Path) -> None:
    fold = {"n": {"count": True}}
    err = spec_error(tmp_path, {"split": {"shard": {"input": "source", "key": "name", "shards": 2}},
                                "part-0": {"reduce": {"input": "split.0", "fold": fold}},
                                "part-1": {"reduce": {"input": "split.1", "fold": fold}},
                                "parts": {"merge": {"inputs": ["part-0", "part-1"]}},
                                "big": {"filter": {"input": "parts", "where": "data.aggregate.n > `5`"}},
                                "total": {"reduce": {"input": "big", "fold": {"n": {"sum": "data.aggregate.n"}}}}})
    assert err.path == "stages.total.reduce.input"


# -- a barrier's output may go unread ----------------------------------------------------------------------------


@pytest.mark.parametrize("barrier", [{"join": {"input": "map"}}, {"join": {"input": "map", "emit": "items"}},
                                     {"reduce": {"input": "map", "fold": {"n": {"count": True}}}}])
def test_a_barrier_output_may_be_unread(tmp_path: Path, barrier: dict[str, Any]) -> None:
    p = pipeline(tmp_path, {"map": WORK, "gate": barrier})
    assert p.readers("gate") == []


def test_a_router_output_may_not_be_unread(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {"map": WORK, "fan": {"copy": {"input": "map", "to": ["a"]}}})
    assert err.path == "stages.fan.copy" and "read by no stage" in err.reason
