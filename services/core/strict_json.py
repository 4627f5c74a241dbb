"""Strict JSON (RFC 8259) for everything batchmesh writes for another program, and the one rule for the numbers
JSON has no form for.

What is written: stream entries (a work item read by the next role), a worker's WORK_ITEM_FILE, sink results,
`manifest.json`, a reduce's aggregate file, the source API's HTTP responses, `status` / `dlq list` output and
the JSON log lines. Python's `json` writes a float NaN or infinity as the bare tokens `NaN` / `Infinity` /
`-Infinity` by default, which are not JSON: JavaScript's `JSON.parse`, Go's `encoding/json`, jq and most other
parsers reject the whole document.

**The rule.** A non-finite number is written as the JSON *string* `"NaN"`, `"Infinity"` or `"-Infinity"`.
That is the Protocol Buffers JSON mapping for float and double (ProtoJSON), and what PostgreSQL's `to_json`
does with a non-finite float. It was chosen over the two alternatives because:

- it loses nothing: `float("NaN")`, `float("Infinity")` and `Number("Infinity")` read the value back, and NaN
  stays distinct from +/-Infinity and from a missing value;
- `null` (pydantic's and JavaScript's `JSON.stringify` choice) would silently turn a computed NaN into "no value";
- rejecting would dead-letter every item of a worker whose result merely holds a NaN (`statistics.mean([])`
  style results are common and legitimate), although the next stage can perfectly well handle it.

A stage that needs a number (a reduce's `sum`, a histogram's buckets) sees a string there and dead-letters the
item with a reason naming the field (services.router.reduce): a non-finite value never enters an aggregate.

Input from outside follows the same rule (`loads_foreign`): a worker's stdout / result.json and a JSONL source
record may hold the bare tokens (Python writes them by default) or a float literal beyond the double range
(`1e400`, which parses as infinity); each becomes the string above, never `null`. What batchmesh itself wrote
(stream entries, item files, results) is read back with `loads`, which refuses those tokens: only a foreign
writer can have put them there, and such an entry is malformed (dead-lettered with the reason).

Integers are written exactly, whatever their size (JSON has no limit; a JavaScript reader holds integers
beyond 2**53 as inexact doubles: use strings for ids that large). A reduce keeps integers exact within
+/-(2**63 - 1) and dead-letters an item that would leave that range (services.router.reduce)."""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

NAN, INF, NEG_INF = "NaN", "Infinity", "-Infinity"
NON_FINITE = (NAN, INF, NEG_INF)

# Bytes that may start a non-strict token or a float literal beyond the double range: only a document holding
# one of these needs the (slower) strict check (see `suspect`). The rule is NaN|Infinity|[eE]\+?0*[1-9]\d{2}
# (the exponent catches 1e308..1e999 and beyond), written as patterns that each start with a literal byte: the
# regex engine skips to a literal directly, while a leading class is tried at every byte.
_EXPONENTS = (re.compile(rb"e\+?0*[1-9]\d{2}"), re.compile(rb"E\+?0*[1-9]\d{2}"))
_SUSPECTS = (re.compile(rb"NaN"), re.compile(rb"Infinity"), *_EXPONENTS)


class StrictJSONError(ValueError):
    """A document that is not strict JSON: a NaN/Infinity token, or a number beyond the double range."""


def _as_string(x: float) -> str:
    return NAN if x != x else (INF if x > 0 else NEG_INF)


def _replace(value: Any) -> Any:
    """`value` with every non-finite float replaced by its string (the rule above); other values unchanged."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _as_string(value)
    if isinstance(value, dict):
        return {k: _replace(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = None, sort_keys: bool = False, ensure_ascii: bool = False,
          default: Callable[[Any], Any] | None = None, separators: tuple[str, str] | None = None) -> str:
    """`value` as strict JSON text (compact unless `indent` or `separators`). Non-finite floats follow the rule
    above. Raises TypeError for a value JSON cannot hold (bytes, a set, an object) unless `default` converts it."""
    separators = separators or ((",", ":") if indent is None else (",", ": "))
    kw: dict[str, Any] = {"separators": separators, "indent": indent, "sort_keys": sort_keys,
                          "ensure_ascii": ensure_ascii, "default": default, "allow_nan": False}
    try:
        return json.dumps(value, **kw)
    except ValueError:  # "Out of range float values are not JSON compliant": rare, so the walk is only done then
        if default is not None:  # what `default` returns may hold non-finite floats too
            kw["default"] = lambda o: _replace(default(o))
        return json.dumps(_replace(value), **kw)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # dumps()'s defaults


def encode(value: Any) -> bytes:
    """Compact strict JSON as UTF-8 bytes: what stream entries, item files and results hold."""
    try:  # what dumps(value) does, without building an encoder per call (the per-item hot path)
        return _COMPACT.encode(value).encode()
    except ValueError:  # a non-finite float: dumps applies the rule above
        return dumps(value).encode()


def _refuse_constant(token: str) -> Any:
    raise StrictJSONError(f"{token} is not JSON (non-finite numbers are written as the strings "
                          f"\"NaN\", \"Infinity\", \"-Infinity\")")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise StrictJSONError(f"number {text[:40]} is beyond the range of a double")
    return x


def loads(text: str | bytes | bytearray) -> Any:
    """Parse strict JSON; StrictJSONError (a ValueError) for NaN/Infinity tokens or a number beyond the double
    range, ValueError for anything else that is not JSON."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def suspect(raw: bytes) -> bool:
    """False when `raw` cannot hold a non-strict number (a fast test on the bytes; True may be a false alarm,
    e.g. "NaN" inside a string): the caller then runs `loads` to be sure. (`bytes.find`, not `in`: `x in raw`
    first tries x as an integer, and the TypeError it raises and clears costs more than the search.)"""
    lower, upper = _EXPONENTS
    return (raw.find(b"NaN") >= 0 or raw.find(b"Infinity") >= 0
            or (raw.find(b"e") >= 0 and lower.search(raw) is not None)
            or (raw.find(b"E") >= 0 and upper.search(raw) is not None))


def suspects(raws: list[bytes]) -> set[int]:
    """The indexes of the `raws` that `suspect` finds suspect (the same answer for every input), for a whole read
    at once: the patterns are searched in the raws joined by a newline, which none of them can match, so every
    match lies inside one raw (one search per pattern per read instead of per entry)."""
    text = b"\n".join(raws)
    if not any(pattern.search(text) for pattern in _SUSPECTS):  # the usual read
        return set()
    starts, at = [], 0
    for raw in raws:
        starts.append(at)
        at += len(raw) + 1
    return {bisect_right(starts, m.start()) - 1 for pattern in _SUSPECTS for m in pattern.finditer(text)}


def _foreign_float(text: str) -> float | str:
    x = float(text)
    return x if math.isfinite(x) else _as_string(x)


def loads_foreign(text: str | bytes | bytearray) -> Any:
    """Parse JSON written by another program (a worker's result, a JSONL source record): the bare tokens
    NaN/Infinity/-Infinity and float literals beyond the double range are accepted and become the strings of
    the rule above, so what is read can always be written again as strict JSON. ValueError if not JSON."""
    return json.loads(text, parse_constant=lambda token: token, parse_float=_foreign_float)
