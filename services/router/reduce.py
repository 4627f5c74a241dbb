"""The reduce (book ch. 12): folds each item into the batch's aggregate as it arrives — while the map is still
running — and emits the final aggregate once the batch is complete. The increments are computed here from the
spec's expressions and applied in Redis together with the item's acknowledgement, once per item id, so the result
is exact under retries and reclaims and several reducer replicas can share a batch. Partial aggregates of sharded
reducers merge in a reduce downstream of them: a sum of their objects, one partial per upstream reducer."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from services.core import Delivery, strict_json
from services.core.barriers import SEP, aggregate, barrier_state, top
from services.core.expressions import compile_expression, route_key, truthy
from services.core.spec_barriers import FoldSpec, ReduceSpec

from .barrier import Arrival, Barrier
from .barrier_fold import MAX_ARGS, MAX_INCREMENTS, Presum
from .document import document

log = logging.getLogger(__name__)

Increment = tuple[str, str, int | float]  # (op 'i' | 'f', hash field, amount: an int for 'i', a finite float for 'f')


# The numeric rule of a fold. Integers are exact at any size up to MAX_DIGITS digits (Redis' HINCRBY within
# int64, exact decimal arithmetic in the fold script beyond: barrier_scripts.STEP); a sum holding a fraction is a
# double (Redis' HINCRBYFLOAT). An item whose value is not a finite number (NaN, Infinity, the strings
# core.strict_json writes for them, 1e400, text, a bool), an integer of more digits, or whose increments would take
# an aggregate beyond the range of a double (1e308 + 1e308) is dead-lettered with the reason, and none of its
# increments is applied: an aggregate is never half an item.
MAX_DIGITS = 400
_LIMIT = 10**MAX_DIGITS  # (computed once: 10**400 per value was most of a fold's Python time)


def _show(value: Any) -> str:
    try:
        return json.dumps(value)[:80]
    except ValueError:  # an integer of more digits than Python prints
        return "an integer of thousands of digits"


def _number(value: Any, what: str) -> float | int:
    kind = type(value)
    if kind is int and -_LIMIT < value < _LIMIT or kind is float and math.isfinite(value):
        return value  # the common case, first; what follows names the fault
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{what}: {_show(value)} is not a finite number")
    if isinstance(value, int) and not -_LIMIT < value < _LIMIT:
        raise ValueError(f"{what}: {_show(value)} is not a finite number a fold keeps exact (integers: at most "
                         f"{MAX_DIGITS} digits)")
    return value


def _total(values: list[Any], what: str) -> float | int:
    """One item's sum of a list, by the same rule (a fraction makes it a double, which must stay finite)."""
    try:
        total = sum(_number(v, what) for v in values)
        return _number(total, what) if isinstance(total, float) else total
    except OverflowError:  # an integer beyond any double added to a fraction
        raise ValueError(f"{what}: the item's sum leaves the range of a double") from None


def _increment(field: str, value: int | float) -> Increment:
    if isinstance(value, int):
        return "i", field, _number(value, field.replace(SEP, "."))
    if not math.isfinite(value):
        raise ValueError(f"{field.replace(SEP, '.')}: the item's sum leaves the range of a double")
    return "f", field, float(value)


def _bucket(value: Any, edges: list[float]) -> str:
    x = _number(value, "histogram value")
    if x < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:], strict=False):
        if x < high:
            return f"[{low:g},{high:g})"
    return f">={edges[-1]:g}"


class Folder:
    """One aggregate of the spec: the increments one item document contributes."""

    def __init__(self, name: str, spec: FoldSpec) -> None:
        self.name, self.spec, self.op = name, spec, spec.operator
        text = getattr(spec, self.op)
        self.expression = None if text is True else compile_expression(text)

    def increments(self, doc: dict[str, Any]) -> list[Increment]:
        value = self.expression.search(doc) if self.expression is not None else True
        if self.op == "count":
            return [("i", self.name, 1)] if truthy(value) else []
        if value is None:
            return []
        if self.op == "sum":
            what = f"sum {self.name}"
            if isinstance(value, dict):
                prefix = f"{self.name}{SEP}"
                return [("i", prefix + key, v) if type(v) is int and -_LIMIT < v < _LIMIT  # the common case
                        else _increment(prefix + key, _number(v, f"{what}.{key}")) for key, v in value.items()]
            values = value if isinstance(value, list) else [value]
            return [_increment(self.name, _total(values, what))]
        values = value if isinstance(value, list) else [value]
        return [("i", f"{self.name}{SEP}{self._key(v)}", 1) for v in values if v is not None]

    def add_ints(self, doc: dict[str, Any], into: dict[str, int]) -> bool:
        """The fast form of `increments`: add this aggregate's increments of `doc` to `into` ({field: integer sum})
        and return True when they are all integers a fold keeps exact (a count; a sum of integers, or of an object
        of integers); else return False (into unchanged) and `increments` gives them, or the reason to refuse."""
        value = self.expression.search(doc) if self.expression is not None else True
        if self.op == "count":
            if truthy(value):
                into[self.name] = into.get(self.name, 0) + 1
            return True
        if value is None:
            return True
        if self.op != "sum":
            return False  # a histogram: its keys and buckets are the general path's
        if type(value) is dict:
            for v in value.values():
                if type(v) is not int or not -_LIMIT < v < _LIMIT:
                    return False
            prefix = f"{self.name}{SEP}"
            if not into:  # the first aggregate of the item: no field to add to yet
                into.update({prefix + key: v for key, v in value.items()})
                return True
            get = into.get
            for key, v in value.items():
                field = prefix + key
                into[field] = get(field, 0) + v
            return True
        if type(value) is int and -_LIMIT < value < _LIMIT:
            into[self.name] = into.get(self.name, 0) + value
            return True
        return False

    def _key(self, value: Any) -> str:
        if self.spec.buckets is not None:
            return _bucket(value, self.spec.buckets)
        key = route_key(value) if not isinstance(value, float) else repr(value)
        if key is None:
            raise ValueError(f"histogram {self.name}: {_show(value)} is not a countable value")
        return key


class Reduce(Barrier):
    kind = "reduce"
    gather = 2048  # entries per step under a backlog (Barrier.step): fewer fields per item in each fold call

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        spec: ReduceSpec = self.spec
        self.folders = [Folder(name, fold) for name, fold in spec.fold.items()]
        self.operators = {name: fold.operator for name, fold in spec.fold.items()}
        self.path = self.settings.out_dir / spec.write if spec.write else None
        self._written: dict[str, tuple[int, float]] = {}  # batch -> (arrived, when) of its last running write
        # pre-summing (presum) is for folds of counts and sums only (a histogram's keys are `increments`')
        self._plan = [(f.op, f.name, f.expression) for f in self.folders] if all(
            f.op in ("count", "sum") for f in self.folders) else None

    def arrival(self, delivery: Delivery) -> Arrival:
        assert delivery.item is not None
        doc, _ = document(delivery)
        doc = doc or {}
        fast = self.arrival_doc(doc)
        if fast is not None:
            return fast
        increments: list[Increment] = []
        for folder in self.folders:
            increments += folder.increments(doc)
        return Arrival(delivery.item.id, increments=tuple(increments))

    def arrival_doc(self, doc: dict[str, Any]) -> Arrival | None:
        """The common case: integers only, kept as {field: amount} (the pre-summed fold's form); None: `arrival`
        computes the increments the general way (fractions, histograms, values it refuses with the reason)."""
        ints: dict[str, int] = {}
        for folder in self.folders:
            if not folder.add_ints(doc, ints):
                return None
        return Arrival(doc["id"], ints=ints)

    def presum_state(self) -> list[list[Any]] | None:
        """Per aggregate: [items counted, None] for a count; [sum of its integer values or None, {key: sum of an
        object's values}] for a sum."""
        return None if self._plan is None else [[0, None] if op == "count" else [None, defaultdict(int)]
                                                for op, _, _ in self._plan]

    def presum(self, doc: dict[str, Any], raw_bytes: int, into: Presum) -> bool:
        """`add_ints` of every aggregate, added to the batch's running sums instead of an item's own dict: the
        same domain (a count; a sum of an integer or of an object of integers, each of at most MAX_DIGITS digits:
        not checked when the item's JSON is shorter than that); False (into unchanged) for anything else."""
        if self._plan is None:
            return False
        found: list[Any] = []
        size = 0  # at least the item's `Arrival.size` (a count not truthy adds no field)
        for op, _, expression in self._plan:
            value = True if expression is None else expression.search(doc)
            if op == "count":
                value = truthy(value)
                size += 1
            elif type(value) is dict:
                for v in value.values():
                    if type(v) is not int:
                        return False
                if raw_bytes > MAX_DIGITS and not all(-_LIMIT < v < _LIMIT for v in value.values()):
                    return False
                size += len(value)
            elif type(value) is int:
                if raw_bytes > MAX_DIGITS and not -_LIMIT < value < _LIMIT:
                    return False
                size += 1
            elif value is not None:
                return False
            found.append(value)
        cost = 6 + 3 * size  # barrier_fold.chunks' count: the part stays one script call
        if not found or size > MAX_INCREMENTS or into.pending and into.cost + cost > MAX_ARGS - 1000:
            return False
        into.cost += cost
        state = into.state
        for i, value in enumerate(found):
            if value is None or value is False:  # nothing to sum, or not counted
                continue
            sums = state[i]
            if value is True:  # counted (a sum's value is never a bool: refused above)
                sums[0] += 1
            elif type(value) is dict:
                keyed = sums[1]
                for key, v in value.items():
                    keyed[key] += v
            else:
                sums[0] = value if sums[0] is None else sums[0] + value
        return True

    def presum_fields(self, part: Presum) -> dict[str, int]:
        fields: dict[str, int] = {}
        for (op, name, _), (total, keyed) in zip(self._plan or (), part.state, strict=True):
            if total is not None and (op == "sum" or total):  # a count that counted nothing adds no field
                fields[name] = total
            if keyed:
                prefix = f"{name}{SEP}"
                for key, v in keyed.items():
                    fields[prefix + key] = v
        return fields

    def result(self, batch: str, summary: dict[str, Any], *, final: bool) -> dict[str, Any]:
        agg = aggregate(self.client, self.keys, self.stage, batch, self.operators)
        data: dict[str, Any] = {**summary, "final": final, "aggregate": agg}
        if self.spec.top:
            data["top"] = {name: top(v, self.spec.top) for name, v in agg.items() if isinstance(v, dict)}
        return data

    def output(self, batch: str, summary: dict[str, Any]) -> dict[str, Any]:
        return self.result(batch, summary, final=True)

    def emitted(self, batch: str, data: dict[str, Any]) -> None:
        if data["items"] == 0 and self.path is not None and self.path.exists():
            # A listing that found nothing new is an empty batch: its aggregate is on the stream, but it must not
            # overwrite the last real one (running the same input twice keeps the result).
            log.info("empty batch: aggregate file kept", extra={"event": "reduce.empty", "stage": self.stage,
                                                                "batch": batch})
            return
        self._write(data)
        if barrier_state(self.client, self.keys, self.stage, batch)["late"]:  # folded while another replica emitted
            self._rewrite(batch)

    def late(self, batch: str, n: int) -> None:
        """Late items are in the batch's aggregate in Redis already (folded once each): the file follows."""
        super().late(batch, n)
        self._rewrite(batch)

    def _rewrite(self, batch: str) -> None:
        """Write the fired batch's aggregate again with its late items and `"late": n` — unless the file holds
        another batch's (a later batch wrote it: that one is the current result). Under a lock next to the file,
        so of two replicas folding late items at once the last to write has read the most recent aggregate."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                held = json.loads(self.path.read_text()).get("batch")
            except (OSError, ValueError, AttributeError):
                held = None
            if held not in (None, batch):
                log.info("late items folded; the aggregate file holds a later batch: kept", extra={
                    "event": "reduce.late_kept", "stage": self.stage, "batch": batch, "file_batch": held})
                return
            state = barrier_state(self.client, self.keys, self.stage, batch)
            data = self.result(batch, {**self.summary(batch), "done": state["arrived"]}, final=True)
            self._write({**data, "late": state["late"]})

    def idle(self, batch: str) -> None:
        """Write the running aggregate of a batch in progress, at most every `every` seconds, when it changed."""
        if self.path is None:
            return
        state = barrier_state(self.client, self.keys, self.stage, batch)
        last_arrived, last_at = self._written.get(batch, (0, 0.0))
        now = time.monotonic()
        if state["arrived"] > last_arrived and now - last_at >= self.spec.every:
            self._written[batch] = (state["arrived"], now)
            summary = {"batch": batch, "items": None, "done": state["arrived"], "failed": [], "failed_count": 0}
            self._write(self.result(batch, summary, final=False))

    def _write(self, data: dict[str, Any]) -> None:
        """Replace the file atomically: a reader sees the previous aggregate or this one, never half of one."""
        if self.path is None:
            return
        path: Path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(strict_json.dumps(data, indent=1) + "\n")  # a reader's JSON.parse takes it (core.strict_json)
        os.replace(tmp, path)
