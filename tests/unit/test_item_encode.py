"""The dispatcher's stream encoding without the model (manager.item_encode, issue 12 first pass) is the model's,
byte for byte, for every item it takes, on both of its encoders (orjson for flat items, the standard library's C
encoder for the rest); every item it does not take is left to the model. Property-based: any JSON-like value,
floats at every magnitude (the encoders differ below 1e-4), every code point, integers past 64 bits."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import WorkItem
from services.manager import item_encode

_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # surrogates and controls too
_FLOATS = st.one_of(st.floats(), st.floats(min_value=-1e-3, max_value=1e-3),
                    st.sampled_from([1e-4, -1e-4, 9.999999999999999e-05, 1e16, 1e-05, 5e-324, -0.0, math.inf]))
_INTS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([2**63, 2**64, -(2**63) - 1]))
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=8)
_ITEMS = st.one_of(st.dictionaries(_TEXT, _SCALARS, max_size=6), st.dictionaries(_TEXT, _VALUES, max_size=4))


def _model(name: str, version: str, item: dict[str, Any], batch: str | None) -> bytes | None:
    try:
        return WorkItem(id=name, data=item, version=version or None, batch=batch).encode()[b"item"]
    except ValueError:  # refused by the model, or text UTF-8 cannot hold
        return None


def _check(name: str, version: str, item: dict[str, Any], batch: str | None) -> bool:
    fast = item_encode.fast_encode(name, version, item, batch)
    if fast is not None:
        assert fast == _model(name, version, item, batch)
    return fast is not None


@settings(max_examples=400, deadline=None)
@given(name=_TEXT.filter(bool), version=_TEXT, item=_ITEMS, batch=st.one_of(st.none(), _TEXT))
def test_what_the_shortcut_encodes_is_the_models_encoding(name: str, version: str, item: dict[str, Any],
                                                          batch: str | None) -> None:
    _check(name, version, item, batch)


@settings(max_examples=200, deadline=None)
@given(name=_TEXT.filter(bool), version=_TEXT, item=_ITEMS, batch=st.one_of(st.none(), _TEXT))
def test_without_orjson_the_c_encoder_gives_the_same(name: str, version: str, item: dict[str, Any],
                                                     batch: str | None) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(item_encode, "_ORJSON", None)
        _check(name, version, item, batch)


def test_only_flat_items_of_safe_floats_take_orjson() -> None:
    # installed, it passed the import-time comparison on the probes; without it the C encoder serves every item
    assert (item_encode._ORJSON is not None) == (item_encode.orjson is not None)
    flat = {"name": "a/b.jpg", "size": 10, "mtime": 1.7e9, "ok": True, "none": None}
    assert item_encode._flat(flat)
    for edge in (1e-5, -9.9e-5, math.nan, math.inf, 2.0**-1074):
        assert not item_encode._flat({"x": edge})  # the values where orjson writes otherwise (or null)
    assert not item_encode._flat({"x": [1]}) and not item_encode._flat({"x": {}})  # nested: the C encoder
    for item in ({"x": 1e-5}, {"x": 2**64}, {"x": -(2**63) - 1}, {"x": "\ud800"}, {"x": math.nan}):
        _check("n", "v", item, "b")  # each takes another path or the model, and stays exact


def test_items_the_shortcut_leaves_to_the_model() -> None:
    for item in ({"f": math.nan}, {1: "x"}, {"s": {1}}, {"name": "\udc80"}, {"b": b"x"}):
        assert item_encode.fast_encode("n", "v", item, "b") is None  # type: ignore[arg-type]
    assert item_encode.fast_encode("a" * (item_encode.MAX_ID + 1), "v", {}, "b") is None
