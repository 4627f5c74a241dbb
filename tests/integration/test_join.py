"""The join on a real Redis, driven step by step as the mesh drives it: the manager dispatches the batch in pages
(Dispatcher) and closes its manifest at some point, an upstream work stage publishes its items onto the join's
input (a StreamConsumer commit, then re-publishes: retries, replays) or dead-letters them (a commit again), a
join consumer dies with entries read but not acknowledged (they are reclaimed), and the join process restarts (a
new Join object on the same Redis) — all at random points. After every step the join has fired exactly when the
manifest is complete and every item arrived or was dead-lettered, and never emitted anything twice."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import Commit, Delivery, Keys, Progress, Settings, StreamConsumer, WorkItem
from services.core.barriers import barrier_state
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import build_barrier
from services.router.barrier import Barrier

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def join_pipeline(emit: str, *, reader: bool = True) -> Pipeline:
    stages: dict[str, Any] = {"work": {"work": {"input": "source", "worker": "noop"}},
                              "gate": {"join": {"input": "work", "emit": emit}}}
    if reader:
        stages["after"] = {"work": {"input": "gate", "worker": "noop"}}
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": f"j{uuid.uuid4().hex[:10]}",
                                    "source": {"path": "."}, "stages": stages})


@dataclass
class World:
    """One pipeline: `source -> work -> gate (join) [-> after]`, its manager's batches and its upstream stage."""

    client: redis.Redis
    settings: Settings
    pipeline: Pipeline
    keys: Keys = field(init=False)
    upstream: StreamConsumer = field(init=False)
    barrier: Barrier = field(init=False)
    deliveries: dict[str, Delivery] = field(default_factory=dict)  # the work stage's reads of `source`
    crashes: int = 0

    def __post_init__(self) -> None:
        name = self.pipeline.name
        # the join reclaims a dead consumer's entries at once (1 ms idle); none is read often enough to hit the cap
        self.settings = self.settings.model_copy(update={"pipeline": name, "visibility_timeout_ms": 1,
                                                         "max_deliveries": 50})
        self.keys = Keys(name)
        self.upstream = StreamConsumer(self.client, self.settings.model_copy(update={"visibility_timeout_ms": 600_000}),
                                       stage="work", input_stream="source", consumer="work-0")
        self.restart()

    def restart(self) -> Barrier:
        self.barrier = build_barrier(self.client, self.settings, self.pipeline, "gate",
                                     consumer=f"gate-{uuid.uuid4().hex[:6]}")
        return self.barrier

    # -- the manager -------------------------------------------------------------------------------------------

    def announce(self) -> str:
        batch = batches.new_batch_id()
        batches.announce(self.client, self.keys, batch)
        return batch

    def dispatch(self, batch: str, ids: list[str]) -> None:
        dispatcher = Dispatcher(self.client, self.keys, Progress(self.client, self.keys), batch=batch)
        stats = dispatcher.dispatch([{"name": i, "version": "1"} for i in ids])
        assert stats.new == len(ids)
        for d in self.upstream.read(1000, block_ms=0):  # the work stage takes them
            assert d.item is not None and d.item.batch == batch
            self.deliveries[d.item.id] = d

    def close(self, batch: str, listed: int) -> None:
        batches.close(self.client, self.keys, batch, listed)

    # -- the upstream work stage --------------------------------------------------------------------------------

    def publish(self, item_id: str) -> None:
        """The work stage's output: the first time in its commit (acknowledging the source entry), then as a
        retry or a replay publishes the same item again."""
        d = self.deliveries[item_id]
        assert d.item is not None
        out = WorkItem(id=item_id, data={"done": True}, batch=d.item.batch)
        if self.client.xpending_range(self.keys.stream("source"), "work", d.entry_id, d.entry_id, 1):
            commit = Commit()
            commit.complete(d, ("work", out))
            self.upstream.commit(commit)
        else:
            self.client.xadd(self.keys.stream("work"), out.encode())

    def dead_letter(self, item_id: str) -> None:
        commit = Commit()
        commit.dead_letter(self.deliveries[item_id], "worker failed 3 times")
        self.upstream.commit(commit)

    # -- the join ---------------------------------------------------------------------------------------------------

    def crash_read(self, count: int) -> None:
        """A join consumer reads entries and dies before folding them; the join restarts and reclaims them."""
        self.crashes += 1
        self.client.xreadgroup("gate", f"crashed-{self.crashes}", {self.keys.stream("work"): ">"}, count=count)
        time.sleep(0.003)  # idle past the 1 ms visibility timeout
        self.restart()

    def crash_before_emit(self) -> None:
        """The join fires, then dies before emitting (its next steps find the batch fired but emit nothing)."""
        self.barrier._finish = lambda batch: None  # type: ignore[method-assign]

    def settle(self) -> None:
        for _ in range(100):
            if not self.barrier.step(0):
                break
        self.barrier.check_recent()
        assert self.client.xpending(self.keys.stream("work"), "gate")["pending"] == 0

    def outputs(self) -> list[WorkItem]:
        return [WorkItem.decode(f) for _, f in self.client.xrange(self.keys.stream("gate"))]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(f[b"event"]) for _, f in self.client.xrange(self.keys.events())]


FATES = st.sampled_from(["arrive", "arrive", "arrive", "dead", "both", "never"])
Op = tuple[str, Any]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[int], list[Op], int]:
    """Item ids, the page each is dispatched in, the ops in order, and the op index the manifest closes at."""
    n = draw(st.integers(0, 8))
    ids = [f"item-{i}" for i in range(n)]
    pages = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    ops: list[Op] = []
    for i in ids:
        fate = draw(FATES)
        if fate in ("arrive", "both"):
            ops += [("arrive", i)] * draw(st.integers(1, 3))  # duplicates: retries, replays
        if fate in ("dead", "both"):
            ops.append(("dead", i))
    ops += [("restart", None)] * draw(st.integers(0, 2))
    ops += [("crash-read", c) for c in draw(st.lists(st.integers(1, 4), max_size=2))]
    ops += [("crash-emit", None)] * draw(st.integers(0, 1))
    ops += [("dispatch", p) for p in sorted(set(pages)) if draw(st.booleans())]  # some pages ahead of need
    ops = list(draw(st.permutations(ops)))
    return ids, pages, ops, draw(st.integers(0, len(ops)))


@EXAMPLES
@given(scenario=scenarios(), emit=st.sampled_from(["event", "items"]))
def test_join_fires_exactly_when_complete_and_exactly_once(client: redis.Redis, settings: Settings,
                                                           scenario: Any, emit: str) -> None:
    ids, pages, ops, close_at = scenario
    w = World(client, settings, join_pipeline(emit))
    batch = w.announce()
    dispatched: set[int] = set()
    published: set[str] = set()
    dead: set[str] = set()
    closed = crippled = False
    fired_with: tuple[set[str], set[str]] | None = None  # (arrived, dead) when the model says it must fire
    emitted_with: tuple[set[str], set[str]] | None = None  # (arrived, dead) when the event appeared

    def dispatch(page: int) -> None:
        if page not in dispatched:
            dispatched.add(page)
            w.dispatch(batch, [i for i, p in zip(ids, pages, strict=True) if p == page])

    for step, op in enumerate([*ops, ("end", None)]):
        if step == close_at:  # the listing ends: every page is dispatched, then the manifest closes
            for page in sorted(set(pages)):
                dispatch(page)
            w.close(batch, len(ids))
            closed = True
        action, arg = op
        if action in ("arrive", "dead"):
            dispatch(pages[ids.index(arg)])
        if action == "arrive":
            w.publish(arg)
            published.add(arg)
        elif action == "dead":
            w.dead_letter(arg)
            dead.add(arg)
        elif action == "dispatch":
            dispatch(arg)
        elif action == "restart" or action == "end":
            w.restart()
            crippled = False
        elif action == "crash-read":
            w.crash_read(arg)
            crippled = False
        elif action == "crash-emit" and fired_with is None:
            w.crash_before_emit()
            crippled = True
        w.settle()

        complete = closed and set(ids) <= published | dead
        outputs, events = w.outputs(), w.events()
        state = barrier_state(client, w.keys, "gate", batch)
        if not complete:
            assert not state["fired"], f"fired early at step {step} ({op})"
            assert outputs == [] and events == [], f"emitted early at step {step} ({op})"
            continue
        assert state["fired"], f"not fired at step {step} ({op})"
        if fired_with is None:
            fired_with = (set(published), set(dead))
        if crippled:
            assert events == [] and not state["emitted"]
            continue
        assert len(events) == 1 and state["emitted"], f"{len(events)} events at step {step} ({op})"
        if emitted_with is None:
            emitted_with = (set(published), set(dead))
        if emit == "items":  # every arrived item exactly once, the late ones as they come
            assert sorted(o.id for o in outputs) == sorted(published)
        else:
            assert len(outputs) == 1

    hypothesis.event("fired" if fired_with else "never complete")
    if fired_with is None:  # some item never came, or the listing never closed: nothing, ever
        assert not (closed and set(ids) <= published | dead)
        return
    assert emitted_with is not None
    [event] = w.events()
    failed = sorted(emitted_with[1] - emitted_with[0])  # dead-lettered, and not arrived by the emission
    assert event["batch"] == batch and event["stage"] == "gate" and event["kind"] == "join"
    assert event["items"] == len(ids) and event["done"] == len(fired_with[0])
    assert event["failed"] == failed and event["failed_count"] == len(failed)
    outputs = w.outputs()
    if emit == "event":
        [out] = outputs
        assert out.id == f"{batch}/gate" and out.batch == batch
        assert out.data["failed"] == failed and out.data["items"] == len(ids)
        assert client.sismember(w.keys.derived(), out.id)
    # everything again, late: a replay of every item and a restarted join add nothing
    for i in published:
        w.publish(i)
    w.restart()
    w.settle()
    assert len(w.events()) == 1 and len(w.outputs()) == len(outputs)
    assert barrier_state(client, w.keys, "gate", batch)["late"] == len(published - fired_with[0])


def test_join_with_emit_items_holds_every_item_until_the_barrier(client: redis.Redis, settings: Settings) -> None:
    w = World(client, settings, join_pipeline("items"))
    batch = w.announce()
    ids = [f"f{i}" for i in range(6)]
    w.dispatch(batch, ids)
    w.close(batch, len(ids))
    for i in ids[:5]:
        w.publish(i)
        w.publish(i)
        w.settle()
        assert w.outputs() == []
    assert barrier_state(client, w.keys, "gate", batch)["arrived"] == 5
    w.dead_letter("f5")
    w.settle()
    outputs = w.outputs()
    assert sorted(o.id for o in outputs) == ids[:5] and {o.batch for o in outputs} == {batch}
    assert all(o.data == {"done": True} for o in outputs)  # the items themselves, byte for byte
    assert client.hlen(w.keys.barrier("gate", batch, "held")) == 0  # released, and forgotten
    [event] = w.events()
    assert event["failed"] == ["f5"] and event["done"] == 5


def test_join_counts_only_its_own_batch(client: redis.Redis, settings: Settings) -> None:
    """Two batches in flight at once: each fires on its own items, once."""
    w = World(client, settings, join_pipeline("event"))
    first, second = w.announce(), w.announce()
    w.dispatch(first, ["a", "b"])
    w.dispatch(second, ["c"])
    w.close(first, 2)
    w.close(second, 1)
    w.publish("a")
    w.publish("c")
    w.settle()
    assert [e["batch"] for e in w.events()] == [second]
    w.publish("b")
    w.settle()
    assert [e["batch"] for e in w.events()] == [second, first]
    assert [o.batch for o in w.outputs()] == [second, first]


def test_an_empty_batch_fires_on_close(client: redis.Redis, settings: Settings) -> None:
    w = World(client, settings, join_pipeline("event"))
    batch = w.announce()
    w.settle()
    assert w.events() == []
    w.close(batch, 0)
    w.settle()
    [event] = w.events()
    assert event["items"] == 0 and event["failed"] == []


def test_a_batch_whose_last_item_is_dead_lettered_fires_without_an_arrival(client: redis.Redis,
                                                                         settings: Settings) -> None:
    w = World(client, settings, join_pipeline("event"))
    batch = w.announce()
    w.dispatch(batch, ["a", "b"])
    w.close(batch, 2)
    w.publish("a")
    w.settle()
    w.dead_letter("b")
    assert w.barrier.step(0) == 0  # nothing arrives: the periodic re-check fires it
    w.barrier.check_recent()
    [event] = w.events()
    assert event["failed"] == ["b"] and event["done"] == 1


def test_an_item_dead_lettered_at_the_join_itself_is_reported(client: redis.Redis, settings: Settings) -> None:
    """An entry the join cannot count (no batch) is dead-lettered at the join; one that is malformed too."""
    w = World(client, settings, join_pipeline("event"))
    batch = w.announce()
    w.dispatch(batch, ["a"])
    w.close(batch, 1)
    client.xadd(w.keys.stream("work"), WorkItem(id="a", data={}).encode())  # lost its batch on the way
    client.xadd(w.keys.stream("work"), {b"item": b"not json"})
    w.settle()
    assert w.events() == []
    letters = client.xrange(w.keys.dead_letters("gate"))
    assert len(letters) == 2 and b"no batch" in letters[0][1][b"reason"]
    w.publish("a")
    w.settle()
    assert len(w.events()) == 1


def test_a_join_nobody_reads_emits_only_the_event(client: redis.Redis, settings: Settings) -> None:
    for emit in ("event", "items"):
        w = World(client, settings, join_pipeline(emit, reader=False))
        batch = w.announce()
        w.dispatch(batch, ["a", "b"])
        w.close(batch, 2)
        w.publish("a")
        w.publish("b")
        w.settle()
        assert len(w.events()) == 1 and not client.exists(w.keys.stream("gate"))
        assert client.hlen(w.keys.barrier("gate", batch, "held")) == 0  # nothing held for nobody


@pytest.mark.parametrize("emit", ["event", "items"])
def test_a_crash_between_firing_and_emitting_emits_at_restart(client: redis.Redis, settings: Settings,
                                                              emit: str) -> None:
    w = World(client, settings, join_pipeline(emit))
    batch = w.announce()
    w.dispatch(batch, ["a", "b"])
    w.close(batch, 2)
    w.crash_before_emit()
    w.publish("a")
    w.publish("b")
    w.settle()
    assert barrier_state(client, w.keys, "gate", batch)["fired"] and w.events() == [] and w.outputs() == []
    w.restart()
    w.settle()
    assert len(w.events()) == 1 and len(w.outputs()) == (2 if emit == "items" else 1)
    second = w.barrier
    w.restart()  # two replicas racing to emit: the second finds it emitted
    second._finish(batch)
    w.barrier._finish(batch)
    assert len(w.events()) == 1 and len(w.outputs()) == (2 if emit == "items" else 1)


def test_an_old_batch_still_fires_when_its_last_item_is_dead_lettered_after_many_newer_batches(
        client: redis.Redis, settings: Settings) -> None:
    """A slow item keeps the first batch open while the manager opens batch after batch (one per poll that finds
    new files); when that item is finally dead-lettered, no item of the old batch arrives any more: only the
    periodic re-check can fire it, however many batches came since."""
    w = World(client, settings, join_pipeline("event"))
    old = w.announce()
    w.dispatch(old, ["slow", "quick"])
    w.close(old, 2)
    w.publish("quick")
    for n in range(25):
        batch = w.announce()
        w.dispatch(batch, [f"new-{n}"])
        w.close(batch, 1)
        w.publish(f"new-{n}")
    w.settle()
    assert len(w.events()) == 25 and old not in {e["batch"] for e in w.events()}
    w.dead_letter("slow")
    w.settle()
    assert old not in {e["batch"] for e in w.events()}  # the recent batches only, until the next sweep
    w.barrier._next_sweep = 0.0  # the sweep is due
    w.settle()
    [event] = [e for e in w.events() if e["batch"] == old]
    assert event["failed"] == ["slow"] and event["done"] == 1


def test_a_restarted_join_sweeps_every_open_batch(client: redis.Redis, settings: Settings) -> None:
    w = World(client, settings, join_pipeline("event"))
    old = w.announce()
    w.dispatch(old, ["slow"])
    w.close(old, 1)
    for _ in range(25):
        w.close(w.announce(), 0)
    w.settle()
    assert len(w.events()) == 25
    w.dead_letter("slow")
    w.restart()
    w.settle()
    assert len(w.events()) == 26 and w.events()[-1]["batch"] == old
