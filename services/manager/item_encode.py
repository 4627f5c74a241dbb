"""A listed item's stream encoding without building the model: byte for byte what
`WorkItem(id=name, data=item, version=version or None, batch=batch).encode()[FIELD]` gives, or None when the item
is not of a shape this shortcut can vouch for (the caller then builds the model, which decides).

Two encoders, fastest first (the dispatch of a million items spent most of its Python time here):
- orjson (when installed) for a flat item: every value a str, int, bool, None or a float JSON writes the same way in
  both (zero, or 1e-4 <= |x| < inf), every key a str. Its output is then the standard library's byte for byte: the
  same escapes for every code point (control characters as \\u00XX or their short forms, nothing else escaped,
  ensure_ascii off), the same shortest round-trip float digits, integers exact. Outside that shape it differs: a
  float below 1e-4 (`0.00001` for `1e-05`), NaN/Infinity (`null`, where strict JSON needs the model's rule),
  integers beyond 64 bits (it raises). A check at import compares the two on probe values and turns orjson off
  if any differs (another orjson version), so a difference can only cost speed.
- the C JSON encoder of the standard library (`json.encoder.c_make_encoder`, what `JSONEncoder.encode` runs,
  without its Python wrapper per call) for every other item, nested ones included."""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from services.core import WorkItem

try:  # optional: an accelerator only (see the module docstring); without it every item takes the C encoder
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]

# The longest item id the model takes (characters), read from the model itself.
MAX_ID = next(m.max_length for m in WorkItem.model_fields["id"].metadata if hasattr(m, "max_length"))

_INF = float("inf")
_SCALARS = frozenset((str, int, bool, type(None)))  # exact types: a subclass may encode differently


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Compact strict JSON (core.strict_json's form) from the C encoder, built once and called directly. No
# circular-reference table: a listing comes from JSON, and a cycle would end in RecursionError, which sends the item
# to the model.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_C_ENCODE = (c_make_encoder(None, _not_json, encode_basestring, None, ":", ",", False, False, False)
             if c_make_encoder is not None else None)


def _encode_json(work: dict[str, Any]) -> str:
    return "".join(_C_ENCODE(work, 0)) if _C_ENCODE is not None else _JSON.encode(work)


def _flat(item: dict[str, Any]) -> bool:
    """Every value of `item` is a scalar orjson writes exactly as the standard library does."""
    for value in item.values():
        kind = type(value)
        if kind is float:
            if not (1e-4 <= abs(value) < _INF or value == 0.0):  # NaN fails both tests
                return False
        elif kind not in _SCALARS:
            return False
    return True


# Probes of every difference known between the two encoders, and values beside each edge.
_PROBES: list[Any] = [
    {"f": [0.0, -0.0, 1e-4, 0.00012345, 0.1, 1 / 3, 1.0, 123456789.0, 2.0**53, 1e15, 1e16, 1e22, 1.5e300,
           1.7976931348623157e308, -2.5e-3]},
    {"i": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, True, False, None]},
    {"s": "".join(map(chr, range(0x30))) + "\"\\/\x7f\x80\u00e9\u2028\u2029\ufeff\uffff\U0001f600\U0010ffff"},
    {"": "", "k\n\"": "v"},
]


def _refuses_other_keys() -> bool:
    """orjson raises TypeError on a key that is not a str (its default, relied on by `fast_encode`)."""
    for key in (1, 1.5, None, True, (1,)):
        try:
            orjson.dumps({"k": {key: 0}})
        except TypeError:
            continue
        return False
    return True


def _orjson_agrees() -> bool:
    try:
        return all(orjson.dumps(p) == _encode_json(p).encode() for p in _PROBES) and _refuses_other_keys()
    except Exception:  # noqa: BLE001 - any failure: not used
        return False


_ORJSON = orjson.dumps if orjson is not None and _orjson_agrees() else None


def fast_encode(name: str, version: str, item: dict[str, Any], batch: str | None) -> bytes | None:
    """The item's stream encoding (module docstring), or None for an item this shortcut cannot vouch for: a name
    the model refuses, a non-string key, a non-finite float, a value JSON cannot hold, text that is not UTF-8."""
    if len(name) > MAX_ID:
        return None
    work: dict[str, Any] = {"id": name}
    if item:
        work["data"] = item
    if version:
        work["version"] = version
    if batch is not None:
        work["batch"] = batch
    if _ORJSON is not None and type(item) is dict and _flat(item):
        try:
            return _ORJSON(work)  # a key that is not a str raises here (orjson's default): no key check needed
        except TypeError:  # a key that is not a str, an integer beyond 64 bits, a lone surrogate: see below
            pass
    try:
        "".join(item)  # every top-level key is a str (TypeError otherwise): one C loop, no generator
    except TypeError:
        return None
    try:
        return _encode_json(work).encode()
    except (ValueError, TypeError, RecursionError):  # NaN/Infinity (ValueError), a set or bytes, lone surrogates
        return None
