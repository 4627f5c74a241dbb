"""The batch forms of the worker's per-item steps give what their one-at-a-time definitions give:
strict_json.suspects against strict_json.suspect, batch_decode.decode_raws against WorkItem.decode,
Commit.record_many against Commit.record, and the watchdog's lock-free slot against its timeout."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import strict_json
from services.core.batch import Commit, Delivery
from services.core.batch_decode import decode_raws
from services.core.item import FIELD, MalformedItem, WorkItem
from services.workers.watchdog import Watchdog

# Bytes that make up the suspect patterns (NaN, Infinity, e/E, '+', digits), JSON punctuation and the separator.
ALPHABET = b'eE+0123456789NaInfity{}":,. x\n'
raws_st = st.lists(st.binary(max_size=14).map(lambda b: bytes(ALPHABET[c % len(ALPHABET)] for c in b)), max_size=8)


@settings(max_examples=1000)
@given(raws_st)
def test_suspects_of_a_read_are_the_entries_suspect_finds_one_by_one(raws: list[bytes]) -> None:
    assert strict_json.suspects(raws) == {i for i, raw in enumerate(raws) if strict_json.suspect(raw)}


def test_suspects_finds_each_pattern_in_any_entry() -> None:
    good = WorkItem(id="noop-1", data={"name": "noop-1"}).encode()[FIELD]
    for bad in (b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1e400}', b'{"x": 1E+0308}', b'{"x": -1e999}'):
        assert strict_json.suspect(bad)
        assert strict_json.suspects([good, bad, good]) == {1}
        assert strict_json.suspects([bad, good, bad]) == {0, 2}
    assert strict_json.suspects([good] * 50) == set() and strict_json.suspects([]) == set()


GOOD = [WorkItem(id=f"item-{i}", data={"n": i, "name": "e123"}, batch="b", attempts=i % 3).encode()[FIELD]
        for i in range(4)]
BAD = [None, b"not json", b'{"id": ""}', b'{"id": 5}', b'{"id": "a", "data": {"x": NaN}}',
       b'{"id": "a", "data": {"x": 1e400}}', b'{"id": "a", "extra": Infinity}', b'{"id": "a", "data": [1]}']


def one(raw: bytes | None) -> WorkItem | str:
    try:
        return WorkItem.decode(None if raw is None else {FIELD: raw})
    except MalformedItem as exc:
        return f"malformed: {exc}"


@given(st.lists(st.sampled_from(GOOD + BAD), max_size=10))
def test_a_read_decodes_each_entry_as_decode_would(raws: list[bytes | None]) -> None:
    got = [f"malformed: {v}" if isinstance(v, MalformedItem) else v for v in decode_raws(raws)]
    assert got == [one(raw) for raw in raws]


def test_record_many_is_record_of_each() -> None:
    batch = [Delivery(f"1-{i}".encode(), WorkItem(id=f"i{i % 3}"), 1) for i in range(5)]  # a repeated id too
    one_by_one, together = Commit(), Commit()
    for d in batch:
        one_by_one.record(d, b"{}")
    together.record_many(batch, b"{}")
    assert together == one_by_one


def test_the_watchdog_slot_ends_a_late_item_and_a_cleared_one_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import time

    monkeypatch.setattr(logging, "shutdown", lambda: None)  # the test process's log handlers stay open
    exits: list[int] = []
    dog = Watchdog(0.05, "s", exit=exits.append)
    dog.timeout_s = 0.2  # no grace: the test's own
    try:
        dog.track(time.perf_counter(), "quick")
        dog.untrack()
        time.sleep(0.35)
        assert exits == []
        dog.track(time.perf_counter(), "hung")
        deadline = time.monotonic() + 10
        while not exits and time.monotonic() < deadline:
            time.sleep(0.02)
        assert exits == [70]
    finally:
        dog.close()
