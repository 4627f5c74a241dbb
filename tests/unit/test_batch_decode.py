"""The batch paths of the worker's hot loop give what their one-at-a-time definitions give: core.batch_decode
against WorkItem.decode, metrics.observe_many against Histogram.observe."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from services.core.batch_decode import decode_many
from services.core.item import FIELD, MAX_ITEM_BYTES, MalformedItem, WorkItem
from services.core.metrics import observe_many

GOOD = [WorkItem(id=f"item-{i}", data={"n": i}, batch="b", attempts=i % 3).encode() for i in range(5)]
BAD = [
    None, {}, {b"other": b"x"},
    {FIELD: b"not json"}, {FIELD: b'{"id": ""}'}, {FIELD: b'{"id": 5}'}, {FIELD: b'{"data": {}}'},
    {FIELD: b'{"id": "a", "attempts": -1}'}, {FIELD: b'{"id": "a", "data": [1]}'},
    {FIELD: b'{"id": "a", "data": {"x": NaN}}'}, {FIELD: b'{"id": "a", "data": {"x": 1e400}}'},
    {FIELD: b'{"id": "\xff\xfe"}'}, {FIELD: b'{"id": "a"} trailing'},
    {FIELD: b'{"id": "a"' + b" " * MAX_ITEM_BYTES + b"}"},
    # Two halves that would make two valid items if the batch were decoded as one joined text.
    {FIELD: b'{"id":"x"},{"id":"y"'}, {FIELD: b'"data":{}}'},
]


def one(fields: dict[bytes, bytes] | None) -> WorkItem | str:
    try:
        return WorkItem.decode(fields)
    except MalformedItem as exc:
        return f"malformed: {exc}"


def as_compared(value: WorkItem | MalformedItem) -> WorkItem | str:
    return f"malformed: {value}" if isinstance(value, MalformedItem) else value


def test_a_batch_decodes_each_entry_as_decode_would():
    entries = [GOOD[0], *BAD[:8], GOOD[1], *BAD[8:], GOOD[2], GOOD[3], GOOD[4]]
    got = [as_compared(v) for v in decode_many(entries)]
    assert got == [one(fields) for fields in entries]
    assert sum(isinstance(v, WorkItem) for v in got) == len(GOOD)


def test_a_batch_of_good_entries_and_one_bad_neighbour():
    for bad in BAD:
        entries = [GOOD[0], bad, GOOD[1]]
        assert [as_compared(v) for v in decode_many(entries)] == [one(fields) for fields in entries]
    assert decode_many([]) == []


def test_observe_many_equals_observe_per_value():
    values = [0.0, 0.0004, 0.0005, 0.0006, 0.01, 0.3, 5.0, 400.0, 1e-9, 0.0005]
    buckets = (0.0005, 0.001, 0.01, 0.5, 5, 300)
    one_by_one = Histogram("t_one_seconds", "x", ("stage",), buckets=buckets, registry=CollectorRegistry())
    batched = Histogram("t_many_seconds", "x", ("stage",), buckets=buckets, registry=CollectorRegistry())
    for v in values:
        one_by_one.labels(stage="s").observe(v)
    observe_many(batched.labels(stage="s"), values[:4])
    observe_many(batched.labels(stage="s"), values[4:])

    def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name.split("_seconds")[1], s.labels, s.value) for m in h.collect() for s in m.samples
                if not s.name.endswith("_created")]

    assert samples(batched) == samples(one_by_one)
    le = {s[1]["le"]: s[2] for s in samples(batched) if s[0] == "_bucket"}
    assert le["0.0005"] == 5  # 0, 0.0004, 1e-9 and both 0.0005 (le is inclusive)
