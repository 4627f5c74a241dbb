"""The first-pass dispatch path (issue 12: one script per 1000 candidates doing the re-check and the XADDs, the
pre-check skipped while pages come all new, the stream encoding built without the model) dispatches each item
exactly once and encodes it byte for byte as WorkItem.encode does."""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis

from services.core import WorkItem
from services.core.keys import Keys
from services.core.progress import Progress
from services.manager.diff import Dispatcher, _fast_encode


def test_a_name_twice_in_a_page_is_dispatched_once_and_counts_stay_exact(client: redis.Redis,
                                                                         pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    d = Dispatcher(client, keys, Progress(client, keys), batch="b")
    stats = d.dispatch([{"name": "a", "version": "1"}, {"name": "a", "version": "1"}, {"name": "a", "version": "2"},
                        {"name": "b"}])
    assert (stats.new, stats.busy, stats.known) == (2, 1, 2)
    assert client.xlen(keys.stream("source")) == 2
    assert Progress(client, keys).counts()["queued"] == 2
    assert client.hget(keys.versions(), "a") == b"1"


def test_a_known_page_after_an_all_new_one_dispatches_nothing_again(client: redis.Redis, pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    d = Dispatcher(client, keys, Progress(client, keys), batch="b")
    first = [{"name": f"i-{i}", "version": "1"} for i in range(50)]
    assert d.dispatch(first).new == 50  # all new: the next page's HMGET pre-check is skipped
    mixed = first[:30] + [{"name": f"j-{i}", "version": "1"} for i in range(20)]
    stats = d.dispatch(mixed)
    assert (stats.new, stats.known) == (20, 30)  # the script re-checked the 30 known ones
    assert d.dispatch(first).new == 0  # pre-checked again
    assert client.xlen(keys.stream("source")) == 70
    assert Progress(client, keys).counts()["queued"] == 70
    assert int(client.hget(keys.arrivals(), keys.stream("source"))) == 70


CASES: list[tuple[dict[str, Any], str, str | None]] = [
    ({"name": "a"}, "", "b"),
    ({}, "", None),
    ({"name": "a", "x": {"1": [1, 2.5, None, True, -0.0, 1e300, 2**70]}, "u": "é\u2028\x00\"\\"}, "v1", ""),
    ({"name": "a", "t": (1, 2), "nested": {1: "an int key, nested"}}, "x", "b"),
]


@pytest.mark.parametrize(("item", "version", "batch"), CASES)
def test_the_fast_encoding_is_the_models(item: dict[str, Any], version: str, batch: str | None) -> None:
    expected = WorkItem(id="n", data=item, version=version or None, batch=batch).encode()[b"item"]
    assert _fast_encode("n", version, item, batch) == expected


@pytest.mark.parametrize("item", [{"f": math.nan}, {1: "x"}, {"s": {1}}, {"name": "\udc80"}])
def test_the_fast_encoding_leaves_other_shapes_to_the_model(item: dict[Any, Any]) -> None:
    assert _fast_encode("n", "v", item, "b") is None
    assert _fast_encode("a" * 1025, "v", {}, "b") is None
