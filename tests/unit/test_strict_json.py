"""core.strict_json: one rule for non-finite numbers (the strings "NaN" / "Infinity" / "-Infinity"), strict JSON
out everywhere, strict parsing of what batchmesh wrote, and the rule applied to what other programs wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core import MalformedItem, WorkItem, strict_json
from services.core.command import item_document, read_result
from services.core.item import FIELD, encode_json
from services.core.stage import Delivery
from services.router.document import document


def node_parse(raw: bytes | str) -> object:
    """What JavaScript's JSON.parse accepts: no NaN / Infinity tokens."""
    def refuse(token: str) -> None:
        raise ValueError(f"bare {token}")
    return json.loads(raw, parse_constant=refuse)


def test_non_finite_floats_become_strings_everything_else_is_unchanged() -> None:
    value = {"mean": math.nan, "hi": math.inf, "lo": [1, -math.inf, 2.5], "n": 2**70, "s": "NaN", "t": (1.0,)}
    out = node_parse(strict_json.encode(value))
    assert out == {"mean": "NaN", "hi": "Infinity", "lo": [1, "-Infinity", 2.5], "n": 2**70, "s": "NaN",
                   "t": [1.0]}


def test_the_formats_we_write_keep_their_options() -> None:
    assert strict_json.dumps({"a": [1, 2]}) == '{"a":[1,2]}'
    assert strict_json.dumps({"b": 1, "a": math.nan}, indent=1, sort_keys=True) == '{\n "a": "NaN",\n "b": 1\n}'
    assert strict_json.dumps({"é": 1}, ensure_ascii=True) == '{"\\u00e9":1}'
    assert strict_json.dumps({"x": object()}, default=lambda o: math.inf) == '{"x":"Infinity"}'
    with pytest.raises(TypeError):
        strict_json.dumps({"x": b"bytes"})


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=4), max_leaves=20))
def test_any_value_encodes_to_json_a_strict_parser_reads(value: object) -> None:
    text = strict_json.dumps(value)
    assert node_parse(text) == strict_json.loads(text)
    assert strict_json.loads(text) == json.loads(text)  # finite values round-trip as themselves


def test_loads_refuses_what_is_not_strict_json() -> None:
    for raw in ('{"x": NaN}', '[Infinity]', '[-Infinity]', '{"x": 1e400}', '[-2e308]'):
        with pytest.raises(strict_json.StrictJSONError):
            strict_json.loads(raw)
    assert strict_json.loads('{"x": 1e300, "n": 123456789012345678901234567890}') == {
        "x": 1e300, "n": 123456789012345678901234567890}


def test_foreign_json_follows_the_rule_not_null() -> None:
    assert strict_json.loads_foreign('{"a": NaN, "b": [Infinity, -Infinity, 1e400, -1e999, 1.5]}') == {
        "a": "NaN", "b": ["Infinity", "-Infinity", "Infinity", "-Infinity", 1.5]}


def test_a_worker_result_with_nan_goes_to_the_next_worker_as_strict_json(tmp_path: Path) -> None:
    result = read_result(b'{"mean": NaN, "ratio": Infinity}', tmp_path)  # what Python's json.dumps printed
    assert result == {"mean": "NaN", "ratio": "Infinity"}
    nxt = WorkItem(id="x", data={**result, "raw": math.nan})  # an in-process worker's float NaN too
    assert node_parse(item_document(nxt))["data"] == {"mean": "NaN", "ratio": "Infinity", "raw": "NaN"}
    assert node_parse(nxt.encode()[FIELD])["data"]["raw"] == "NaN"


def test_a_stream_entry_with_a_bare_nan_is_malformed_not_decoded() -> None:
    for raw in (b'{"id":"a","data":{"x":NaN}}', b'{"id":"a","data":{"x":-Infinity}}',
                b'{"id":"a","data":{"x":1e999}}'):
        with pytest.raises(MalformedItem, match="not strict JSON"):
            WorkItem.decode({FIELD: raw})
        assert document(Delivery(b"1-0", None, 1, raw))[0] is None  # a router does not route it either
    # a false alarm of the fast check (the letters inside a string, a finite 1e300) decodes as usual
    item = WorkItem.decode({FIELD: b'{"id":"NaN","data":{"w":"Infinity","x":1e300,"y":2E+100}}'})
    assert item.data == {"w": "Infinity", "x": 1e300, "y": 2e100}
    assert encode_json({"x": math.nan}) == b'{"x":"NaN"}'
