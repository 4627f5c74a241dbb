"""The barrier's light decoding (services.router.barrier_read) against the one definition, WorkItem.decode: for
any bytes, either it declines (the entry then goes the usual way, with WorkItem.decode's reason) or it gives exactly
the document and attempts the decoded WorkItem gives. core.strict_json.suspect, the fast test it uses, answers as
the rule's one regex (RULE)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import WorkItem, strict_json
from services.core.item import MalformedItem
from services.router.barrier_read import light_document

RULE = re.compile(rb"NaN|Infinity|[eE]\+?0*[1-9]\d{2}")  # core.strict_json's rule for a suspect document

_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats(allow_nan=True)
    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3), max_leaves=8)
_docs = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=3) | st.integers() | st.just("x" * 1025), "data": _values,
    "batch": st.text(max_size=3) | st.none() | st.integers(),
    "version": st.text(max_size=2) | st.none() | st.integers(),
    "attempts": st.integers(-2, 3) | st.booleans() | st.text(max_size=1), "error": st.text(max_size=2) | st.none(),
    "extra": st.integers()})


def _expected(raw: bytes) -> tuple[dict[str, Any], int] | None:
    try:
        item = WorkItem.decode({b"item": raw})
    except MalformedItem:
        return None
    return {"id": item.id, "name": item.id, "data": item.data, "version": item.version, "batch": item.batch}, \
        item.attempts


def _check(raw: bytes) -> None:
    light = light_document({b"item": raw})
    if light is not None:  # it may decline a valid item (the usual way then decodes it), never accept another
        assert light == _expected(raw), raw


@settings(max_examples=150, deadline=None)
@given(_docs)
def test_light_document_is_the_work_item_or_declines(doc: dict[str, Any]) -> None:
    _check(json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_light_document_on_any_bytes_and_suspect_matches_strict_json(raw: bytes) -> None:
    _check(raw)
    _check(b'{"id":"a","batch":"b","data":{"k":' + raw + b"}}")
    assert strict_json.suspect(raw) == (RULE.search(raw) is not None)


def test_plain_items_are_taken_the_light_way_and_hostile_ones_declined() -> None:
    plain = b'{"id":"doc-1","data":{"counts":{"w":3}},"batch":"b1"}'
    assert light_document({b"item": plain}) == ({"id": "doc-1", "name": "doc-1", "data": {"counts": {"w": 3}},
                                                 "version": None, "batch": "b1"}, 0)
    big = b'{"id":"d","data":{"n":%d},"batch":"b"}' % 10**40
    assert light_document({b"item": big})[0]["data"]["n"] == 10**40  # exact beyond int64, as WorkItem.decode
    for raw in (b'{"id":"d","data":{"n":NaN},"batch":"b"}', b'{"id":"d","data":{"n":1e400},"batch":"b"}',
                b'{"id":"","batch":"b"}', b'{"id":"d"}', b'{"id":"d","batch":"b","data":[]}', b"[1]", b"\xff",
                b'{"id":"d","batch":"b","attempts":true}'):
        assert light_document({b"item": raw}) is None, raw
    assert light_document({}) is None
