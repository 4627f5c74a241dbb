"""Barriers after routers that send some of a batch's items elsewhere (core.spec_skips): a filter before a reduce or
join, a splitter with one route to the barrier (one through a merge) and one elsewhere, a sharder with a shard that
does not lead to it. Real routers (server-side Lua and the Python path, built with the pipeline's skip plan as
`batchmesh router` builds them) route a real batch (the manager's Dispatcher and manifest); routers die with a
batch read and not committed (a consumer that stopped: its pending entries are reclaimed by the next router after a
1 ms visibility timeout), items are routed twice (a retry, a replay), barriers restart at random points. The
barrier fires exactly once, never before close, and its aggregate equals the fold over the items that reach it."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import CommitError, Keys, Progress, Settings, WorkItem
from services.core.barriers import barrier_state
from services.core.progress import DONE
from services.core.spec import Pipeline
from services.core.spec_skips import skip_plan
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import Router, build_barrier, build_router, shard_of
from services.router.barrier import Barrier

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

FOLD = {"files": {"count": True}, "total": {"sum": "data.n"}, "words": {"sum": "data.words"},
        "kinds": {"histogram": "data.kind"}}
SINK = {"work": {"input": "gate", "worker": "noop"}}

# Each shape: its stages (the barrier is `gate`), the routers to run in order, and which items reach the barrier.
SHAPES: dict[str, tuple[dict[str, Any], list[str], Any]] = {
    "filter": ({"keep": {"filter": {"input": "source", "where": "data.keep"}},
                "gate": {"reduce": {"input": "keep", "fold": FOLD}}, "after": SINK},
               ["keep"], lambda d: bool(d["keep"])),
    "split": ({"route": {"split": {"input": "source", "by": "data.kind", "routes": {"a": "one", "b": "two"},
                                   "default": "rest"}},
               "both": {"merge": {"inputs": ["route.one", "route.two"]}},
               "gate": {"reduce": {"input": "both", "fold": FOLD}}, "after": SINK,
               "elsewhere": {"work": {"input": "route.rest", "worker": "noop"}}},
              ["route", "both"], lambda d: d["kind"] in ("a", "b")),
    "filter+split": ({"keep": {"filter": {"input": "source", "where": "data.keep"}},
                      "route": {"split": {"input": "keep", "by": "data.kind", "routes": {"a": "agg"},
                                          "default": "rest"}},
                      "gate": {"reduce": {"input": "route.agg", "fold": FOLD}}, "after": SINK,
                      "elsewhere": {"work": {"input": "route.rest", "worker": "noop"}}},
                     ["keep", "route"], lambda d: bool(d["keep"]) and d["kind"] == "a"),
    # (no spill: nothing consumes spread.1 here, so its items would spill over to the barrier's shard)
    "shard": ({"spread": {"shard": {"input": "source", "key": "name", "shards": 2, "spill": False}},
               "gate": {"reduce": {"input": "spread.0", "fold": FOLD}}, "after": SINK,
               "elsewhere": {"work": {"input": "spread.1", "worker": "noop"}}},
              ["spread"], lambda d: shard_of(d["name"], 2) == 0),
}


def pipeline_of(stages: dict[str, Any]) -> Pipeline:
    p = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": f"k{uuid.uuid4().hex[:10]}",
                                 "source": {"path": "."}, "stages": stages})
    p.check_graph()
    return p


def fold(items: list[dict[str, Any]]) -> dict[str, Any]:
    words: Counter[str] = Counter()
    for d in items:
        words.update(d["words"])
    return {"files": len(items), "total": sum(d["n"] for d in items), "words": dict(sorted(words.items())) or 0,
            "kinds": dict(sorted(Counter(d["kind"] for d in items).items()))}


class Mesh:
    """One batch through the routers of a pipeline into its barrier `gate`, every role a real object on Redis."""

    def __init__(self, client: redis.Redis, settings: Settings, pipeline: Pipeline, routers: list[str],
                 server_side: bool) -> None:
        self.client, self.pipeline, self.router_names, self.server_side = client, pipeline, routers, server_side
        # No delivery cap in reach: up to 3 routers die holding an entry, each reclaim is a delivery, and a dead
        # letter is not what these properties are about (test_barriers.py covers barriers after dead letters).
        self.settings = settings.model_copy(update={"pipeline": pipeline.name, "visibility_timeout_ms": 1,
                                                    "batch_size": 3, "max_deliveries": 100})
        self.keys = Keys(pipeline.name)
        self.batch = batches.new_batch_id()
        batches.announce(client, self.keys, self.batch)
        self.routers = [self.router(name) for name in routers]
        self.barrier = self.restart()
        self.deaths = 0

    def router(self, name: str, consumer: str | None = None) -> Router:
        return build_router(self.client, self.settings, name, self.pipeline.stages[name].body,
                            server_side=self.server_side, drop_state=DONE, skips=skip_plan(self.pipeline, name),
                            consumer=consumer or f"{name}-{uuid.uuid4().hex[:6]}")

    def restart(self) -> Barrier:
        self.barrier = build_barrier(self.client, self.settings, self.pipeline, "gate",
                                     consumer=f"gate-{uuid.uuid4().hex[:6]}")
        return self.barrier

    def dispatch(self, records: list[dict[str, Any]]) -> None:
        Dispatcher(self.client, self.keys, Progress(self.client, self.keys), batch=self.batch).dispatch(records)

    def again(self, record: dict[str, Any]) -> None:
        """The item on the source stream once more (a retry that published twice, a replay)."""
        item = WorkItem(id=record["name"], data=record, version="1", batch=self.batch)
        self.client.xadd(self.keys.stream("source"), item.encode())

    def die(self, which: int, count: int) -> None:
        """Router `which` reads `count` entries and dies before committing them; its replacement reclaims them."""
        self.deaths += 1
        dying = self.router(self.router_names[which], consumer=f"dying-{self.deaths}")
        for c in dying.consumers:
            c.read(count, block_ms=0)
        self.routers[which] = self.router(self.router_names[which])

    def close(self, listed: int) -> None:
        batches.close(self.client, self.keys, self.batch, listed)

    def settle(self) -> None:
        for _ in range(3):  # a router after another one gets its input only when that one has routed
            for r in self.routers:
                for _ in range(200):
                    if not r.step(0):
                        break
        for _ in range(100):
            if not self.barrier.step(0):
                break
        self.barrier.check_recent()

    def caught_up(self) -> bool:
        return all(r.caught_up() for r in self.routers)

    def outputs(self) -> list[WorkItem]:
        return [WorkItem.decode(f) for _, f in self.client.xrange(self.keys.stream("gate"))]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(f[b"event"]) for _, f in self.client.xrange(self.keys.events())]


RECORD = st.fixed_dictionaries({"keep": st.booleans(), "kind": st.sampled_from(["a", "b", "c"]),
                                "n": st.integers(-3, 9), "words": st.dictionaries(st.sampled_from(["x", "y", "ü"]),
                                                                                   st.integers(1, 5), max_size=2)})


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, int]], int]:
    data = draw(st.lists(RECORD, max_size=10))
    ops: list[tuple[str, int]] = [("settle", 0)] * draw(st.integers(1, 3))
    ops += [("again", i) for i in draw(st.lists(st.integers(0, max(len(data) - 1, 0)), max_size=4)) if data]
    ops += [("die", c) for c in draw(st.lists(st.integers(1, 4), max_size=3))]
    ops += [("restart", 0)] * draw(st.integers(0, 2))
    ops = list(draw(st.permutations(ops)))
    return data, ops, draw(st.integers(0, len(ops)))


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("server_side", [True, False], ids=["lua", "python"])
@EXAMPLES
@given(scenario=scenarios())
def test_a_reduce_after_routers_folds_exactly_what_reaches_it_and_fires_once(
        client: redis.Redis, settings: Settings, shape: str, server_side: bool, scenario: Any) -> None:
    data, ops, close_at = scenario
    stages, routers, reaches = SHAPES[shape]
    m = Mesh(client, settings, pipeline_of(stages), routers, server_side)
    records = [{"name": f"doc-{i}", "version": "1", **d} for i, d in enumerate(data)]
    m.dispatch(records)
    kept = [r for r in records if reaches(r)]
    closed = False
    for step, (action, arg) in enumerate([*ops, ("end", 0)]):
        if step == close_at:
            m.close(len(records))
            closed = True
        if action == "again":
            m.again(records[arg])
        elif action == "die":
            m.die(arg % len(m.routers), arg)
        elif action == "restart":
            m.restart()
        m.settle()
        out = m.outputs()
        assert len(out) <= 1, f"fired twice at step {step}"
        if not closed:
            assert out == [], f"fired before the manifest was complete, step {step}"
        elif m.caught_up():  # every item routed (none pending with a dead router): must have fired
            assert len(out) == 1, f"did not fire at step {step}"
        if out:  # never early: when it fired, everything that reaches it was in
            assert out[0].data["aggregate"] == fold(kept), f"step {step}"
    deadline = time.monotonic() + 60
    while not (m.caught_up() and m.outputs()) and time.monotonic() < deadline:  # reclaims of what a router left
        m.settle()
        time.sleep(0.005)
    [final] = m.outputs()
    [event] = m.events()
    assert final.data["aggregate"] == fold(kept) and final.data["final"] is True
    assert final.data["items"] == len(records) and final.data["done"] == len(kept)
    assert final.data["skipped"] == len(records) - len(kept) == event["skipped"]
    assert final.data["failed"] == [] and event["failed_count"] == 0
    assert barrier_state(client, m.keys, "gate", m.batch)["late"] == 0
    assert client.xpending(m.keys.stream(m.pipeline.stages["gate"].body.input), "gate")["pending"] == 0
    if "keep" in routers:  # a filter's drop is done for progress
        states = {k.decode(): v.decode() for k, v in client.hgetall(m.keys.states()).items()}
        assert all(states[r["name"]] == DONE for r in records if not r["keep"])
    for r in records:  # everything once more, and a restarted barrier: nothing changes
        m.again(r)
    m.restart()
    for _ in range(3):
        m.settle()
    assert len(m.outputs()) == 1 and len(m.events()) == 1
    assert m.outputs()[0].data["aggregate"] == fold(kept)
    assert barrier_state(client, m.keys, "gate", m.batch)["late"] == 0


@pytest.mark.parametrize("emit", ["event", "items"])
@pytest.mark.parametrize("server_side", [True, False], ids=["lua", "python"])
@EXAMPLES
@given(scenario=scenarios())
def test_a_join_after_a_filter_fires_once_every_item_is_joined_or_filtered(
        client: redis.Redis, settings: Settings, emit: str, server_side: bool, scenario: Any) -> None:
    data, ops, close_at = scenario
    stages = {"keep": {"filter": {"input": "source", "where": "data.keep"}},
              "gate": {"join": {"input": "keep", "emit": emit}}, "after": SINK}
    m = Mesh(client, settings, pipeline_of(stages), ["keep"], server_side)
    records = [{"name": f"doc-{i}", "version": "1", **d} for i, d in enumerate(data)]
    m.dispatch(records)
    kept = sorted(r["name"] for r in records if r["keep"])
    closed = False
    for step, (action, arg) in enumerate([*ops, ("end", 0)]):
        if step == close_at:
            m.close(len(records))
            closed = True
        if action == "again":
            m.again(records[arg])
        elif action == "die":
            m.die(0, arg)
        elif action == "restart":
            m.restart()
        m.settle()
        events = m.events()
        assert len(events) <= 1 and (closed or not events), f"step {step}"
        if closed and m.caught_up():
            assert len(events) == 1, f"did not fire at step {step}"
        if events:
            assert events[0]["done"] == len(kept), f"fired before every kept item was in, step {step}"
    deadline = time.monotonic() + 60
    while not (m.caught_up() and m.events()) and time.monotonic() < deadline:
        m.settle()
        time.sleep(0.005)
    [event] = m.events()
    assert event["items"] == len(records) and event["done"] == len(kept)
    assert event["skipped"] == len(records) - len(kept) and event["failed"] == []
    out = m.outputs()
    if emit == "items":  # each kept item released once, however often it arrived
        assert sorted(i.id for i in out) == kept
    else:
        assert len(out) == 1 and out[0].data["done"] == len(kept)


@pytest.mark.parametrize("server_side", [True, False], ids=["lua", "python"])
def test_a_record_that_cannot_be_written_routes_nothing(client: redis.Redis, settings: Settings,
                                                        server_side: bool) -> None:
    """The record and the routing are one step: a skipped set holding another type (checked before anything is
    written) fails the whole step — nothing published, acknowledged, counted or marked — and once it is fixed the
    same entries are routed (the Python path's reclaimed) and recorded once."""
    m = Mesh(client, settings, pipeline_of(SHAPES["filter"][0]), ["keep"], server_side)
    records = [{"name": f"doc-{i}", "version": "1", "keep": i % 2 == 0, "kind": "a", "n": i, "words": {}}
               for i in range(6)]
    m.dispatch(records)
    m.close(len(records))
    skipped = m.keys.barrier("gate", m.batch, "skipped")
    client.set(skipped, "not a set")
    with pytest.raises((redis.ResponseError, CommitError), match="not a set"):
        m.routers[0].step(0)
    assert client.xlen(m.keys.stream("keep")) == 0 and client.hgetall(m.keys.stage_stats("keep")) == {}
    assert set(client.hvals(m.keys.states())) == {b"queued"}
    client.delete(skipped)
    deadline = time.monotonic() + 60
    while not m.outputs() and time.monotonic() < deadline:
        m.settle()
        time.sleep(0.005)
    [final] = m.outputs()
    kept = [r for r in records if r["keep"]]
    assert final.data["aggregate"] == fold(kept) and final.data["skipped"] == len(records) - len(kept)
    assert client.scard(skipped) == len(records) - len(kept) and client.ttl(skipped) > 0
