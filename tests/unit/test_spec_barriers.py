"""Barrier stages in the pipeline spec: a bad fold is a SpecError naming the bad field; a filter, splitter or
sharder before a join or reduce records what it sends away from it (core.spec_skips), refused only where that
record could not be exact (a copy of the item reaching the barrier another way, a partial held back before a
reduce of partials); a barrier's own output may go unread."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.core.spec import Pipeline, SpecError, load_pipeline
from services.core.spec_barriers import FoldSpec
from services.core.spec_skips import Skip, skip_plan

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
def test_a_filter_upstream_of_a_barrier_records_its_drops_for_it(tmp_path: Path, kind: str) -> None:
    barrier = {"input": "map"} if kind == "join" else {"input": "map", "fold": {"n": {"count": True}}}
    p = pipeline(tmp_path, {"keep": {"filter": {"input": "source", "where": "data.n > `1`"}},
                            "map": {"work": {"input": "keep", "worker": "noop"}},
                            "gate": {kind: barrier}})
    assert skip_plan(p, "keep") == [Skip("gate", frozenset())]  # only a drop is away from the barrier
    assert skip_plan(p, "map") == [] and skip_plan(p, "gate") == []


def test_a_filter_directly_before_a_barrier_is_fine(tmp_path: Path) -> None:
    p = pipeline(tmp_path, {"map": WORK, "keep": {"filter": {"input": "map", "where": "data.ok"}},
                            "gate": {"join": {"input": "keep"}}})
    assert skip_plan(p, "keep") == [Skip("gate", frozenset())]


def test_a_split_records_the_routes_that_do_not_lead_to_the_barrier(tmp_path: Path) -> None:
    p = pipeline(tmp_path, {
        "route": {"split": {"input": "source", "by": "data.kind", "routes": {"a": "one", "b": "two"},
                            "default": "other"}},
        "one": {"work": {"input": "route.one", "worker": "noop"}},
        "two": {"work": {"input": "route.two", "worker": "noop"}},
        "other": {"work": {"input": "route.other", "worker": "noop"}},
        "both": {"merge": {"inputs": ["one", "two"]}},
        "gate": {"join": {"input": "both"}}})
    outputs = p.stages["route"].outputs("route")
    assert skip_plan(p, "route") == [Skip("gate", frozenset({outputs.index("route.other")}))]


def test_a_split_whose_every_route_reaches_the_barrier_records_nothing(tmp_path: Path) -> None:
    p = pipeline(tmp_path, {
        "route": {"split": {"input": "source", "by": "data.kind", "routes": {"a": "one"}, "default": "other"}},
        "one": {"work": {"input": "route.one", "worker": "noop"}},
        "other": {"work": {"input": "route.other", "worker": "noop"}},
        "both": {"merge": {"inputs": ["one", "other"]}},
        "gate": {"join": {"input": "both"}}})
    assert skip_plan(p, "route") == []


def test_a_filter_or_split_after_a_barrier_is_fine(tmp_path: Path) -> None:
    pipeline(tmp_path, {"map": WORK, "gate": {"join": {"input": "map", "emit": "items"}},
                        "keep": {"filter": {"input": "gate", "where": "data.ok"}},
                        "route": {"split": {"input": "keep", "by": "data.kind", "default": "rest"}},
                        "last": {"work": {"input": "route.rest", "worker": "noop"}}})


def test_a_shard_output_not_reaching_the_barrier_is_recorded(tmp_path: Path) -> None:
    p = pipeline(tmp_path, {"split": {"shard": {"input": "source", "key": "name", "shards": 2}},
                            "map-0": {"work": {"input": "split.0", "worker": "noop"}},
                            "map-1": {"work": {"input": "split.1", "worker": "noop"}},
                            "gate": {"join": {"input": "map-0"}}})
    assert skip_plan(p, "split") == [Skip("gate", frozenset({1}))]


def test_a_reducer_per_shard_without_merging_the_partials_reduces_its_shard(tmp_path: Path) -> None:
    fold = {"n": {"count": True}}
    p = pipeline(tmp_path, {"split": {"shard": {"input": "source", "key": "name", "shards": 2}},
                            "part-0": {"reduce": {"input": "split.0", "fold": fold}},
                            "part-1": {"reduce": {"input": "split.1", "fold": fold}}})
    assert skip_plan(p, "split") == [Skip("part-0", frozenset({1})), Skip("part-1", frozenset({0}))]


def test_sharded_reducers_merged_after_record_nothing_for_their_siblings_shards(tmp_path: Path) -> None:
    """part-0 stops waiting for what part-1 folded (siblings): the sharder records nothing; a filter before the
    sharder records its drops for both; a filter inside one shard's branch for both too (the other reducer would
    wait for the dropped item otherwise)."""
    fold = {"n": {"count": True}}
    p = pipeline(tmp_path, {"keep": {"filter": {"input": "source", "where": "data.ok"}},
                            "split": {"shard": {"input": "keep", "key": "name", "shards": 2}},
                            "odd": {"filter": {"input": "split.1", "where": "data.odd"}},
                            "part-0": {"reduce": {"input": "split.0", "fold": fold}},
                            "part-1": {"reduce": {"input": "odd", "fold": fold}},
                            "parts": {"merge": {"inputs": ["part-0", "part-1"]}},
                            "total": {"reduce": {"input": "parts", "fold": {"n": {"sum": "data.aggregate.n"}}}}})
    assert skip_plan(p, "split") == []
    both = [Skip("part-0", frozenset()), Skip("part-1", frozenset())]
    assert skip_plan(p, "keep") == both and skip_plan(p, "odd") == both


def test_a_filter_on_one_copy_when_another_copy_reaches_the_barrier_is_refused(tmp_path: Path) -> None:
    """The other copy may arrive after the dropped one was recorded: the barrier could fire without it."""
    err = spec_error(tmp_path, {"fan": {"copy": {"input": "source", "to": ["a", "b"]}},
                                "keep": {"filter": {"input": "fan.a", "where": "data.ok"}},
                                "both": {"merge": {"inputs": ["keep", "fan.b"]}},
                                "gate": {"join": {"input": "both"}}})
    assert err.path == "stages.gate.join.input"
    assert "filter stage 'keep'" in err.reason and "copy stage 'fan'" in err.reason


def test_a_split_on_a_stream_another_stage_reads_on_its_way_to_the_barrier_is_refused(tmp_path: Path) -> None:
    err = spec_error(tmp_path, {
        "map": WORK,
        "route": {"split": {"input": "map", "by": "data.kind", "routes": {"a": "one"}, "default": "rest"}},
        "one": {"work": {"input": "route.one", "worker": "noop"}},
        "rest": {"work": {"input": "route.rest", "worker": "noop"}},
        "also": {"work": {"input": "map", "worker": "noop"}},
        "both": {"merge": {"inputs": ["one", "also"]}},
        "gate": {"reduce": {"input": "both", "fold": {"n": {"count": True}}}}})
    assert err.path == "stages.gate.reduce.input"
    assert "split stage 'route'" in err.reason and "'map' is read by both" in err.reason


def test_a_copy_whose_other_branch_goes_elsewhere_is_fine_before_a_filter(tmp_path: Path) -> None:
    p = pipeline(tmp_path, {"fan": {"copy": {"input": "source", "to": ["a", "b"]}},
                            "keep": {"filter": {"input": "fan.a", "where": "data.ok"}},
                            "gate": {"join": {"input": "keep"}},
                            "archive": {"work": {"input": "fan.b", "worker": "noop"}}})
    assert skip_plan(p, "keep") == [Skip("gate", frozenset())] and skip_plan(p, "fan") == []


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
