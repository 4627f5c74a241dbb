"""A reduce on hostile numbers (issue 11, part 4): NaN / Infinity (as the strings core.strict_json writes for
them), integers beyond 2**63, 400-digit integers, float sums that overflow a double (1e308 + 1e308). The fold is
all or nothing per item: after any sequence of good and hostile items the aggregate equals the ground truth over
the good ones (integers exact at any size), and every hostile item is in the dead-letter stream with its reason —
none of its increments applied, not even its count."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import Keys, Progress, Settings, WorkItem, list_dead_letters
from services.core.barriers import aggregate
from services.core.progress import DEAD, DONE
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import build_barrier

# the order matters: a count and an exact integer sum are applied before the float sum that may overflow
FOLD = {"files": {"count": True}, "total": {"sum": "data.n"}, "words": {"sum": "data.w"}, "flt": {"sum": "data.f"}}
OPERATORS = {"files": "count", "total": "sum", "words": "sum", "flt": "sum"}


class Reduce:
    """One batch of a reduce stage `gate` reading the stream `work`, fed directly (as the upstream would)."""

    def __init__(self, client: redis.Redis, settings: Settings, n: int) -> None:
        self.pipeline = Pipeline.model_validate({
            "apiVersion": "batchmesh/v1", "name": f"h{uuid.uuid4().hex[:10]}", "source": {"path": "."},
            "stages": {"work": {"work": {"input": "source", "worker": "noop"}},
                       "gate": {"reduce": {"input": "work", "fold": FOLD}},
                       "after": {"work": {"input": "gate", "worker": "noop"}}}})
        self.pipeline.check_graph()
        self.client, self.keys = client, Keys(self.pipeline.name)
        self.settings = settings.model_copy(update={"pipeline": self.pipeline.name})
        self.batch = batches.new_batch_id()
        batches.announce(client, self.keys, self.batch)
        self.ids = [f"d{i}" for i in range(n)]
        Dispatcher(client, self.keys, Progress(client, self.keys), batch=self.batch).dispatch(
            [{"name": i, "version": "1"} for i in self.ids])
        batches.close(client, self.keys, self.batch, n)
        self.barrier = build_barrier(client, self.settings, self.pipeline, "gate", consumer="r-1")

    def publish(self, i: int, data: dict[str, Any]) -> None:
        item = WorkItem(id=self.ids[i], data=data, batch=self.batch)
        self.client.xadd(self.keys.stream("work"), item.encode())

    def settle(self) -> None:
        while self.barrier.step(0):
            pass
        self.barrier.check_recent()

    def aggregate(self) -> dict[str, Any]:
        return aggregate(self.client, self.keys, "gate", self.batch, OPERATORS)

    def dead(self) -> dict[str, str]:
        return {letter.item_id or "?": letter.reason for letter in list_dead_letters(self.client, self.keys, "gate")}

    def outputs(self) -> list[WorkItem]:
        return [WorkItem.decode(f) for _, f in self.client.xrange(self.keys.stream("gate"))]


class Truth:
    """The fold in Python: exact integers, doubles that must stay finite, all or nothing per item."""

    def __init__(self) -> None:
        self.files, self.total, self.flt, self.words = 0, 0, 0.0, Counter()
        self.floats = False  # a float was folded into flt (else it is the integer 0)

    def fold(self, data: dict[str, Any]) -> str | None:
        """None if folded, else the aggregate whose value made the item hostile."""
        n, f, w = data.get("n"), data.get("f"), data.get("w", {})
        if n is not None and (not isinstance(n, int) or abs(n) >= 10**400):
            return "total"
        if any(not isinstance(v, int) for v in w.values()):
            return "words"
        if f is not None and (not isinstance(f, float) or not math.isfinite(self.flt + f)):
            return "flt"
        self.files += 1
        self.total += n or 0
        self.words.update(w)
        if f is not None:
            self.flt, self.floats = self.flt + f, True
        return None

    def aggregate(self) -> dict[str, Any]:
        return {"files": self.files, "total": self.total, "words": dict(self.words) if self.words else 0,
                "flt": pytest.approx(self.flt, rel=1e-12) if self.floats else 0}


INTS = st.integers(-5, 5) | st.integers(-2**70, 2**70) | st.sampled_from([2**63 - 1, -2**63, 2**63, 10**50,
                                                                           -(10**399)])
GOOD = st.fixed_dictionaries({"n": INTS}, optional={"w": st.dictionaries(st.sampled_from("ab"), INTS, max_size=2),
                                                    "f": st.floats(-1e3, 1e3)})
HOSTILE = st.sampled_from([
    {"n": "NaN"}, {"n": "Infinity"}, {"n": "-Infinity"},  # what core.strict_json made of a worker's NaN
    {"n": 10**400}, {"n": 3, "w": {"a": 1, "b": "Infinity"}},
    {"n": 7, "f": 1e308}, {"n": -7, "f": -1.5e308}, {"n": 2**64, "w": {"a": 2**80}, "f": 1.5e308},
])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(GOOD | HOSTILE, min_size=1, max_size=10), dup=st.lists(st.integers(0, 9), max_size=3))
def test_a_fold_is_all_or_nothing_per_item(client: redis.Redis, settings: Settings, items: list[dict[str, Any]],
                                           dup: list[int]) -> None:
    r, truth = Reduce(client, settings, len(items)), Truth()
    hostile: dict[str, str] = {}
    for i, data in enumerate(items):
        r.publish(i, data)
        if (bad := truth.fold(data)) is not None:
            hostile[r.ids[i]] = bad
        if i in dup:
            r.publish(i, data)  # a duplicate (a retry, a reclaim): changes nothing
        r.settle()
        assert r.aggregate() == truth.aggregate(), f"after item {i}"
    [final] = r.outputs()
    assert final.data["aggregate"] == truth.aggregate()
    assert sorted(final.data["failed"]) == sorted(hostile)
    dead = r.dead()
    assert sorted(dead) == sorted(hostile), "every hostile item dead-lettered (each copy of a duplicate)"
    for item_id, field in hostile.items():
        assert dead[item_id].startswith("reduce: ") and field in dead[item_id], dead[item_id]
    progress = Progress(client, r.keys)
    assert {i: progress.state_of(i) for i in r.ids} == {i: DEAD if i in hostile else DONE for i in r.ids}


def test_1e308_plus_1e308_dead_letters_the_second_item_and_applies_none_of_it(client: redis.Redis,
                                                                              settings: Settings) -> None:
    r = Reduce(client, settings, 3)
    r.publish(0, {"n": 2**63 - 1, "w": {"a": 1}, "f": 1e308})
    r.publish(1, {"n": 5, "w": {"a": 1, "b": 2}, "f": 1e308})  # its count, n, words apply first: all undone
    r.publish(2, {"n": 2**63 - 1, "f": -1e308})
    r.settle()
    [final] = r.outputs()
    assert final.data["aggregate"] == {"files": 2, "total": 2**64 - 2, "words": {"a": 1}, "flt": 0}
    assert final.data["failed"] == ["d1"]
    assert r.dead() == {"d1": "reduce: flt: the sum leaves the range of a double"}
    [letter] = list_dead_letters(client, r.keys, "gate")
    assert WorkItem.decode({b"item": letter.raw_item}).data["f"] == 1e308, "the item as it was, to replay"
    assert client.hget(r.keys.stage_stats("gate"), "dead") == b"1"


def test_integers_stay_exact_beyond_int64(client: redis.Redis,
                                                                     settings: Settings) -> None:
    r = Reduce(client, settings, 4)
    for i, n in enumerate([2**63 - 1, 2**63 - 1, -(10**30), 10**30 + 7]):
        r.publish(i, {"n": n, "w": {"a": 2**100 if i % 2 else -(2**62)}})
    r.settle()
    [final] = r.outputs()
    assert final.data["aggregate"]["total"] == 2**64 + 5 and type(final.data["aggregate"]["total"]) is int
    assert final.data["aggregate"]["words"] == {"a": 2**101 - 2**63}
    assert r.dead() == {}


def test_an_item_of_thousands_of_increments_is_undone_whole(client: redis.Redis, settings: Settings) -> None:
    r = Reduce(client, settings, 2)
    r.publish(0, {"n": 1, "w": {"k0": 5}, "f": 1.5e308})
    r.publish(1, {"n": 1, "w": {f"k{i}": i + 1 for i in range(2500)}, "f": 1e308})  # 2,502 increments, the last fails
    r.settle()
    assert r.aggregate() == {"files": 1, "total": 1, "words": {"k0": 5}, "flt": pytest.approx(1.5e308, rel=1e-15)}
    assert list(r.dead()) == ["d1"]
