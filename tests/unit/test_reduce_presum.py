"""A reduce's pre-summed light way (Reduce.presum, under a backlog: services.router.barrier._prepare) against the
per-item way it replaces (Reduce.arrival_doc, then barrier_fold.summed): it takes an item only when arrival_doc
takes it, every item arrival_doc takes it takes too (while the part stays one script call), and the part's sums
per aggregate field are exactly those of the items' own increments, first copy of an id only. Logic only: Redis
is only where the Reduce is built (its consumer group)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import Settings
from services.core.spec import Pipeline
from services.router import build_barrier
from services.router.barrier_fold import MAX_INCREMENTS, Presum

FOLD = {"files": {"count": True}, "sized": {"count": "data.big"}, "total": {"sum": "data.n"},
        "words": {"sum": "data.w"}}

_numbers = (st.integers(-50, 50) | st.sampled_from([10**30, -(10**25), 10**299, 2**63, 10**399, 10**400, -(10**400)])
            | st.booleans() | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=2)
            | st.none())
_data = st.fixed_dictionaries({}, optional={
    "n": _numbers | st.lists(st.integers(0, 3), max_size=2),
    "w": st.dictionaries(st.sampled_from(["a", "b", "c", "\u00e9"]), _numbers, max_size=3) | _numbers,
    "big": st.booleans() | st.integers(0, 2) | st.none()})
_items = st.lists(st.tuples(st.sampled_from(["d0", "d1", "d2", "d3", "d4"]), _data), max_size=12)


@pytest.fixture(scope="module")
def reduce(embedded_redis_url: str) -> Any:
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": "presum", "source": {"path": "."},
        "stages": {"work": {"work": {"input": "source", "worker": "noop"}},
                   "gate": {"reduce": {"input": "work", "fold": FOLD}}}})
    return build_barrier(redis.Redis.from_url(embedded_redis_url), Settings(pipeline=f"presum{uuid.uuid4().hex[:8]}"),
                         pipeline, "gate", consumer="t")


def _doc(item_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": item_id, "name": item_id, "data": data, "version": None, "batch": "b"}


@settings(max_examples=100, deadline=None)
@given(_items)
def test_presum_takes_what_arrival_doc_takes_and_sums_the_same(reduce: Any,
                                                                items: list[tuple[str, dict[str, Any]]]) -> None:
    part = Presum(reduce.presum_state())
    expected: Counter[str] = Counter()
    fields: set[str] = set()
    for item_id, data in items:
        doc = _doc(item_id, data)
        raw_bytes = len(json.dumps({"id": item_id, "data": data, "batch": "b"}).encode())
        arrival = reduce.arrival_doc(doc)
        if item_id in part.ids:  # _prepare never offers a second copy (the batch goes the usual way)
            continue
        took = reduce.presum(doc, raw_bytes, part)
        assert took == (arrival is not None and arrival.size <= MAX_INCREMENTS), (doc, arrival)
        if took:
            part.ids[item_id] = None
            assert arrival is not None and arrival.ints is not None
            expected.update(arrival.ints)
            fields |= arrival.ints.keys()  # a field summed to 0 is still written
    sums = reduce.presum_fields(part)
    assert sums == {f: expected[f] for f in fields}
    assert all(type(v) is int for v in sums.values())


def test_a_long_item_is_range_checked_and_a_short_one_need_not_be(reduce: Any) -> None:
    doc = _doc("d", {"n": 10**400})
    assert reduce.presum(doc, 500, Presum(reduce.presum_state())) is False  # 401 digits: arrival_doc refuses it
    assert reduce.arrival_doc(doc) is None
    part = Presum(reduce.presum_state())
    assert reduce.presum(_doc("d", {"n": 10**399, "w": {"a": 2}}), 450, part) is True
    assert reduce.presum_fields(part) == {"files": 1, "total": 10**399, "words\x1fa": 2}
