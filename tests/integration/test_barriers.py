"""Join and reduce on a real Redis, driven step by step: the manager's manifest (Dispatcher + batches), items
arriving on the barrier's input as an upstream stage publishes them, dead letters noted as an upstream commit
notes them, and barrier restarts (a new object on the same Redis) at random points."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import Keys, Progress, Settings, WorkItem
from services.core.barriers import aggregate
from services.core.deadletter import add_dead_letter
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import build_barrier, build_router

EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def spec(name: str, barrier: dict[str, Any], reader: bool = False) -> Pipeline:
    stages: dict[str, Any] = {"work": {"work": {"input": "source", "worker": "noop"}}, "gate": barrier}
    if reader:
        stages["after"] = {"work": {"input": "gate", "worker": "noop"}}
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": stages})


class Harness:
    """One batch of `ids`: the manifest, the upstream `work` stage's outputs and dead letters, the barrier."""

    def __init__(self, client: redis.Redis, settings: Settings, pipeline: Pipeline, ids: list[str]) -> None:
        self.client, self.pipeline, self.ids = client, pipeline, ids
        self.settings = settings.model_copy(update={"pipeline": pipeline.name})
        self.keys = Keys(pipeline.name)
        self.batch = batches.new_batch_id()
        batches.announce(client, self.keys, self.batch)
        self.dispatcher = Dispatcher(client, self.keys, Progress(client, self.keys), batch=self.batch)
        self.dispatcher.dispatch([{"name": i, "version": "1"} for i in ids])
        self.barrier = self.restart()

    def restart(self) -> Any:
        self.barrier = build_barrier(self.client, self.settings, self.pipeline, "gate")
        return self.barrier

    def close(self) -> None:
        batches.close(self.client, self.keys, self.batch, len(self.ids))

    def arrive(self, item_id: str, data: dict[str, Any] | None = None) -> None:
        item = WorkItem(id=item_id, data=data or {}, batch=self.batch)
        self.client.xadd(self.keys.stream("work"), item.encode())

    def dead(self, item_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        raw = WorkItem(id=item_id, batch=self.batch).encode()[b"item"]
        add_dead_letter(pipe, self.keys, stage="work", stream=self.keys.stream("source"), raw_item=raw,
                        reason="boom", deliveries=3)
        pipe.execute()

    def settle(self) -> None:
        while self.barrier.step(0):
            pass
        self.barrier.check_recent()

    def outputs(self) -> list[WorkItem]:
        return [WorkItem.decode(f) for _, f in self.client.xrange(self.keys.stream("gate"))]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(f[b"event"]) for _, f in self.client.xrange(self.keys.events())]


FATES = st.sampled_from(["arrive", "arrive", "arrive", "dead", "both", "never"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]], int, set[int]]:
    n = draw(st.integers(0, 10))
    ids = [f"item-{i}" for i in range(n)]
    fates = {i: draw(FATES) for i in ids}
    ops: list[tuple[str, str]] = []
    for i, fate in fates.items():
        if fate in ("arrive", "both"):
            ops += [("arrive", i)] * draw(st.integers(1, 3))  # duplicates: a retry, a reclaim, a replay
        if fate in ("dead", "both"):
            ops.append(("dead", i))
    ops = draw(st.permutations(ops))
    close_at = draw(st.integers(0, len(ops)))
    restarts = set(draw(st.lists(st.integers(0, len(ops)), max_size=3)))
    return ids, ops, close_at, restarts


@EXAMPLES
@given(scenario=scenarios(), emit=st.sampled_from(["event", "items"]))
def test_join_never_fires_early_and_fires_exactly_once(client: redis.Redis, settings: Settings,
                                                      scenario: Any, emit: str) -> None:
    ids, ops, close_at, restarts = scenario
    h = Harness(client, settings, spec(f"j{uuid.uuid4().hex[:8]}", {"join": {"input": "work", "emit": emit}},
                                       reader=True), ids)
    arrived: set[str] = set()
    dead: set[str] = set()
    closed = False
    at_fire: tuple[set[str], set[str]] | None = None  # (arrived, dead) when the model says it must fire
    for step in range(len(ops) + 1):
        if step in restarts:
            h.restart()
        if step == close_at:
            h.close()
            closed = True
        if step < len(ops):
            action, item_id = ops[step]
            if action == "arrive":
                h.arrive(item_id)
                arrived.add(item_id)
            else:
                h.dead(item_id)
                dead.add(item_id)
        h.settle()
        complete = closed and set(ids) <= arrived | dead
        if not complete:
            assert h.outputs() == [] and h.events() == [], f"fired early at step {step}"
        elif at_fire is None:
            at_fire = (set(arrived), set(dead))
            assert len(h.events()) == 1, f"did not fire at step {step}"
    out, events = h.outputs(), h.events()
    if at_fire is None:
        assert out == [] and events == []
        return
    assert len(events) == 1
    failed = sorted(at_fire[1] - at_fire[0])  # dead-lettered and not arrived when it fired
    assert events[0]["failed"] == failed and events[0]["items"] == len(ids)
    assert events[0]["done"] == len(at_fire[0])
    if emit == "items":  # each arrived item released exactly once: at the barrier, or at once when late
        assert sorted(i.id for i in out) == sorted(arrived)
    else:
        assert len(out) == 1 and out[0].data["failed"] == failed and out[0].batch == h.batch
    h.restart()  # a restarted join finds the batch emitted: nothing twice
    h.settle()
    assert len(h.events()) == 1 and len(h.outputs()) == len(out)


FOLD = {"files": {"count": True}, "big": {"count": "data.n > `2`"}, "total": {"sum": "data.n"},
        "words": {"sum": "data.words"}, "tags": {"histogram": "data.tags"},
        "sizes": {"histogram": "data.n", "buckets": [0, 2, 4]}}
ITEM_DATA = st.fixed_dictionaries({
    "n": st.integers(0, 5) | st.floats(0, 5, allow_nan=False).map(lambda x: round(x, 2)),
    "words": st.dictionaries(st.sampled_from(["a", "b", "ü", "long-word"]), st.integers(1, 50), max_size=3),
    "tags": st.lists(st.sampled_from(["red", "blue", "green"]), max_size=3)})


def expected_aggregate(data: list[dict[str, Any]]) -> dict[str, Any]:
    """The same aggregate in plain Python (a sum nothing was folded into is 0, whatever its values' type)."""
    words: Counter[str] = Counter()
    for d in data:
        words.update(d["words"])
    sizes: Counter[str] = Counter()
    for d in data:
        sizes["[0,2)" if d["n"] < 2 else "[2,4)" if d["n"] < 4 else ">=4"] += 1
    return {"files": len(data), "big": sum(1 for d in data if d["n"] > 2), "total": sum(d["n"] for d in data),
            "words": dict(words) or 0, "tags": dict(Counter(t for d in data for t in d["tags"])), "sizes": dict(sizes)}


@EXAMPLES
@given(data=st.lists(ITEM_DATA, max_size=12), duplicates=st.lists(st.integers(0, 11), max_size=8),
       crash=st.booleans())
def test_reduce_is_exact_under_duplicates_and_crashes(client: redis.Redis, settings: Settings,
                                                      data: list[dict[str, Any]], duplicates: list[int],
                                                      crash: bool) -> None:
    ids = [f"f{i}" for i in range(len(data))]
    h = Harness(client, settings, spec(f"r{uuid.uuid4().hex[:8]}", {"reduce": {"input": "work", "fold": FOLD}},
                                       reader=True), ids)
    for i, d in zip(ids, data, strict=True):
        h.arrive(i, d)
    for k in duplicates:  # the same item again (a retry that published twice, a replay)
        if k < len(data):
            h.arrive(ids[k], data[k])
    if crash:  # a reducer read a batch and died before folding it: the entries are reclaimed by the next one
        h.client.xreadgroup("gate", "dead-consumer", {h.keys.stream("work"): ">"}, count=5)
        h.settings = h.settings.model_copy(update={"visibility_timeout_ms": 1})
        h.restart()
    h.close()
    deadline = time.monotonic() + 60
    while not h.outputs() and time.monotonic() < deadline:  # reclaims are due every half visibility timeout
        h.settle()
        time.sleep(0.02)
    [final] = h.outputs()
    want = expected_aggregate(data)
    got = final.data["aggregate"]
    assert got.pop("total") == pytest_approx(want.pop("total"))
    assert got == want and final.data["final"] is True and final.data["items"] == len(data)


def pytest_approx(x: float) -> Any:
    import pytest

    return pytest.approx(x, abs=1e-9)


def test_reduce_running_aggregate_is_visible_before_the_batch_completes(client: redis.Redis,
                                                                         settings: Settings) -> None:
    h = Harness(client, settings, spec(f"r{uuid.uuid4().hex[:8]}",
                                       {"reduce": {"input": "work", "fold": {"words": {"sum": "data.words"}}}}),
                ["a", "b", "c"])
    h.close()
    h.arrive("a", {"words": {"x": 2}})
    h.arrive("b", {"words": {"x": 1, "y": 1}})
    h.settle()
    assert aggregate(client, h.keys, "gate", h.batch, {"words": "sum"}) == {"words": {"x": 3, "y": 1}}
    assert h.events() == []  # c is still out
    h.dead("c")
    h.settle()
    [event] = h.events()
    assert event["failed"] == ["c"] and event["done"] == 2


def test_a_malformed_value_dead_letters_the_item_and_the_batch_still_completes(client: redis.Redis,
                                                                               settings: Settings) -> None:
    h = Harness(client, settings, spec(f"r{uuid.uuid4().hex[:8]}",
                                       {"reduce": {"input": "work", "fold": {"n": {"sum": "data.n"}}}}, reader=True),
                ["a", "b"])
    h.close()
    h.arrive("a", {"n": 2})
    h.arrive("b", {"n": "two"})
    h.settle()
    [final] = h.outputs()
    assert final.data["aggregate"] == {"n": 2} and final.data["failed"] == ["b"]
    [letter] = client.xrange(h.keys.dead_letters("gate"))
    assert b"not a finite number" in letter[1][b"reason"]


def test_partial_aggregates_of_sharded_reducers_merge_into_one(client: redis.Redis, settings: Settings) -> None:
    """Two reducers each fold one shard's items; a third sums their final partials. Same result as one reduce."""
    name = f"m{uuid.uuid4().hex[:8]}"
    words = {"sum": "data.words"}
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                        "stages": {
        "split": {"shard": {"input": "source", "key": "name", "shards": 2}},
        "map-0": {"work": {"input": "split.0", "worker": "noop"}},
        "map-1": {"work": {"input": "split.1", "worker": "noop"}},
        "part-0": {"reduce": {"input": "map-0", "fold": {"words": words, "n": {"count": True}}}},
        "part-1": {"reduce": {"input": "map-1", "fold": {"words": words, "n": {"count": True}}}},
        "parts": {"merge": {"inputs": ["part-0", "part-1"]}},
        "total": {"reduce": {"input": "parts", "fold": {"words": {"sum": "data.aggregate.words"},
                                                        "n": {"sum": "data.aggregate.n"}}}},
        "after": {"work": {"input": "total", "worker": "noop"}}}})
    pipeline.check_graph()  # a reducer per shard is valid: together they see every item
    s = settings.model_copy(update={"pipeline": name})
    keys = Keys(name)
    batch = batches.new_batch_id()
    batches.announce(client, keys, batch)
    ids = [f"doc-{i}" for i in range(30)]
    Dispatcher(client, keys, Progress(client, keys), batch=batch).dispatch([{"name": i, "version": "1"} for i in ids])
    batches.close(client, keys, batch, len(ids))
    expected: Counter[str] = Counter()
    for n, item_id in enumerate(ids[:-1]):
        data = {"words": {"a": n % 3 + 1, f"w{n % 7}": 2}}
        expected.update(data["words"])
        client.xadd(keys.stream(f"map-{n % 2}"), WorkItem(id=item_id, data=data, batch=batch).encode())
    pipe = client.pipeline(transaction=True)  # the last one fails in map-1: part-0 must not wait for it either
    add_dead_letter(pipe, keys, stage="map-1", stream=keys.stream("split.1"), reason="boom", deliveries=3,
                    raw_item=WorkItem(id=ids[-1], batch=batch).encode()[b"item"])
    pipe.execute()
    stages = [build_barrier(client, s, pipeline, "part-0"), build_barrier(client, s, pipeline, "part-1"),
              build_router(client, s, "parts", pipeline.stages["parts"].body),
              build_barrier(client, s, pipeline, "total")]
    for _ in range(4):
        for stage in stages:
            stage.step(0)
        for stage in stages:
            if hasattr(stage, "check_recent"):
                stage.check_recent()
    [final] = [WorkItem.decode(f) for _, f in client.xrange(keys.stream("total"))]
    assert final.data["items"] == 2 and final.data["done"] == 2  # one partial per upstream reducer
    assert final.data["aggregate"] == {"words": dict(sorted(expected.items())), "n": 29}
    assert final.data["failed"] == [ids[-1]]
