"""The reduce on a real Redis, driven step by step: the manager's batch (Dispatcher, announce/close), an upstream
work stage publishing its results onto the reduce's input (a StreamConsumer commit, then re-publishes: retries,
replays) or dead-lettering them, reducer consumers dying with entries read but not acknowledged (reclaimed after a
1 ms visibility timeout) and reducer restarts. The running and final aggregates must equal the same aggregate
computed in Python over the distinct items that arrived."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import Commit, Delivery, Keys, Progress, Settings, StreamConsumer, WorkItem
from services.core.barriers import aggregate, barrier_state
from services.core.progress import DEAD, DONE
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import build_barrier, build_router
from services.router.barrier import Barrier

EXAMPLES = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_pipeline(stages: dict[str, Any]) -> Pipeline:
    p = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": f"r{uuid.uuid4().hex[:10]}",
                                 "source": {"path": "."}, "stages": stages})
    p.check_graph()
    return p


def reduce_pipeline(fold: dict[str, Any], **options: Any) -> Pipeline:
    return make_pipeline({"work": {"work": {"input": "source", "worker": "noop"}},
                          "gate": {"reduce": {"input": "work", "fold": fold, **options}},
                          "after": {"work": {"input": "gate", "worker": "noop"}}})


class World:
    """A pipeline's manager, its upstream stage `upstream` (reading `source`) and a barrier `stage`."""

    def __init__(self, client: redis.Redis, settings: Settings, pipeline: Pipeline, *, upstream: str = "work",
                 stage: str = "gate") -> None:
        self.client, self.pipeline, self.stage, self.upstream_stage = client, pipeline, stage, upstream
        self.settings = settings.model_copy(update={"pipeline": pipeline.name, "visibility_timeout_ms": 1,
                                                    "max_deliveries": 50})
        self.keys = Keys(pipeline.name)
        self.upstream = StreamConsumer(client, self.settings.model_copy(update={"visibility_timeout_ms": 600_000}),
                                       stage=upstream, input_stream="source", consumer=f"{upstream}-0")
        self.deliveries: dict[str, Delivery] = {}
        self.batch = batches.new_batch_id()
        batches.announce(client, self.keys, self.batch)
        self.crashes = 0
        self.barrier = self.restart()

    def restart(self, stage: str | None = None) -> Barrier:
        self.barrier = build_barrier(self.client, self.settings, self.pipeline, stage or self.stage,
                                     consumer=f"r-{uuid.uuid4().hex[:6]}")
        return self.barrier

    def dispatch(self, ids: list[str]) -> None:
        dispatcher = Dispatcher(self.client, self.keys, Progress(self.client, self.keys), batch=self.batch)
        assert dispatcher.dispatch([{"name": i, "version": "1"} for i in ids]).new == len(ids)
        for d in self.upstream.read(1000, block_ms=0):
            assert d.item is not None
            self.deliveries[d.item.id] = d

    def close(self, listed: int) -> None:
        batches.close(self.client, self.keys, self.batch, listed)

    def publish(self, item_id: str, data: dict[str, Any], to: str | None = None) -> None:
        """The upstream stage's result: in its commit the first time, then again as a retry/replay would."""
        d = self.deliveries[item_id]
        out = WorkItem(id=item_id, data=data, batch=self.batch)
        stream = to or self.upstream_stage
        if self.client.xpending_range(self.keys.stream("source"), self.upstream_stage, d.entry_id, d.entry_id, 1):
            commit = Commit()
            commit.complete(d, (stream, out))
            self.upstream.commit(commit)
        else:
            self.client.xadd(self.keys.stream(stream), out.encode())

    def dead_letter(self, item_id: str) -> None:
        commit = Commit()
        commit.dead_letter(self.deliveries[item_id], "worker failed")
        self.upstream.commit(commit)

    def crash_read(self, count: int) -> None:
        """A reducer reads entries and dies before folding them; a restarted one reclaims them."""
        self.crashes += 1
        dying = build_barrier(self.client, self.settings, self.pipeline, self.stage, consumer=f"dying-{self.crashes}")
        dying.consumer.read(count, block_ms=0)
        time.sleep(0.003)  # idle past the visibility timeout
        self.restart()

    def settle(self, *barriers: Barrier) -> None:
        for b in barriers or (self.barrier,):
            for _ in range(100):
                if not b.step(0):
                    break
            b.check_recent()

    def outputs(self, stage: str | None = None) -> list[WorkItem]:
        return [WorkItem.decode(f) for _, f in self.client.xrange(self.keys.stream(stage or self.stage))]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(f[b"event"]) for _, f in self.client.xrange(self.keys.events())]

    def aggregate(self, operators: dict[str, str], stage: str | None = None) -> dict[str, Any]:
        return aggregate(self.client, self.keys, stage or self.stage, self.batch, operators)


def approx(value: Any) -> Any:
    """Float sums in Redis (long double) and Python (double) may differ in the last bits: compare approximately,
    but keep the structure (dict keys, ints vs floats do not matter)."""
    if isinstance(value, dict):
        return {k: approx(v) for k, v in value.items()}
    return pytest.approx(value, rel=1e-12, abs=1e-9)


# -- the property: exact under duplicates, reclaims, restarts, dead letters and malformed values -----------------

FOLD = {
    "files": {"count": True},
    "flagged": {"count": "data.flag"},
    "heavy": {"count": "data.n > `2`"},
    "total": {"sum": "data.n"},
    "listed": {"sum": "data.ns"},
    "words": {"sum": "data.words"},
    "kind": {"histogram": "data.kind"},
    "tags": {"histogram": "data.tags"},
    "sizes": {"histogram": "data.size", "buckets": [0, 1.5, 3]},
}
OPERATORS = {name: next(op for op in ("count", "sum", "histogram") if op in f) for name, f in FOLD.items()}
NUMBER = st.integers(-5, 10) | st.floats(-5, 10, allow_nan=False).map(lambda x: round(x, 3))
ITEM = st.fixed_dictionaries({
    "flag": st.booleans(),
    "n": NUMBER | st.none(),
    "ns": st.lists(NUMBER, max_size=3),
    "words": st.dictionaries(st.sampled_from(["a", "b", "ü", "long word"]), st.integers(1, 9) | NUMBER, max_size=3),
    "kind": st.sampled_from(["x", "y", 7, True, None]),
    "tags": st.lists(st.sampled_from(["red", "blue", 3]), max_size=3),
    "size": NUMBER,
})
BAD = [{"n": "two"}, {"ns": [1, "2"]}, {"words": {"a": "many"}}, {"kind": {"an": "object"}}, {"size": "big"},
       {"n": 10**400}]


def key(value: Any) -> str:
    return {True: "true", False: "false"}[value] if isinstance(value, bool) else str(value)


def bucket(x: float) -> str:
    return "<0" if x < 0 else "[0,1.5)" if x < 1.5 else "[1.5,3)" if x < 3 else ">=3"


def python_aggregate(items: list[dict[str, Any]]) -> dict[str, Any]:
    words: Counter[str] = Counter()
    for d in items:
        words.update(d["words"])
    return {
        "files": len(items),
        "flagged": sum(1 for d in items if d["flag"]),
        "heavy": sum(1 for d in items if isinstance(d["n"], int | float) and d["n"] > 2),
        "total": sum(d["n"] for d in items if d["n"] is not None),
        "listed": sum(sum(d["ns"]) for d in items),
        "words": dict(words) if words else 0,  # a sum nothing was folded into is 0, whatever its values' type
        "kind": dict(Counter(key(d["kind"]) for d in items if d["kind"] is not None)),
        "tags": dict(Counter(key(t) for d in items for t in d["tags"])),
        "sizes": dict(Counter(bucket(d["size"]) for d in items)),
    }


@st.composite
def reduce_scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, Any]], int]:
    items = draw(st.lists(ITEM, max_size=8))
    ops: list[tuple[str, Any]] = []
    for i, data in enumerate(items):
        fate = draw(st.sampled_from(["arrive", "arrive", "arrive", "dead", "both", "bad"]))
        if fate == "bad":
            data.update(draw(st.sampled_from(BAD)))
        if fate in ("arrive", "both", "bad"):
            ops += [("arrive", i)] * draw(st.integers(1, 3))  # duplicates: a retry, a replay
        if fate in ("dead", "both"):
            ops.append(("dead", i))
    ops += [("crash", c) for c in draw(st.lists(st.integers(1, 5), max_size=3))]
    ops += [("restart", None)] * draw(st.integers(0, 2))
    ops = list(draw(st.permutations(ops)))
    return items, ops, draw(st.integers(0, len(ops)))


def is_bad(data: dict[str, Any]) -> bool:
    return any(all(data.get(k) == v for k, v in bad.items()) for bad in BAD)


@EXAMPLES
@given(scenario=reduce_scenarios())
def test_reduce_is_exact_under_duplicates_reclaims_and_restarts(client: redis.Redis, settings: Settings,
                                                                scenario: Any) -> None:
    items, ops, close_at = scenario
    w = World(client, settings, reduce_pipeline(FOLD))
    ids = [f"doc-{i}" for i in range(len(items))]
    w.dispatch(ids)
    arrived: set[int] = set()  # distinct items folded (bad ones are dead-lettered at the reduce instead)
    dead: set[int] = set()
    fired: tuple[set[int], set[int]] | None = None  # (arrived, dead) when it fired: what the final item reports
    for step, (action, arg) in enumerate([*ops, ("end", None)]):
        if step == close_at:
            w.close(len(ids))
        if action == "arrive":
            w.publish(ids[arg], items[arg])
            if is_bad(items[arg]):
                dead.add(arg)
            else:
                arrived.add(arg)
        elif action == "dead":
            w.dead_letter(ids[arg])
            dead.add(arg)
        elif action == "crash":
            w.crash_read(arg)
        elif action == "restart":
            w.restart()
        w.settle()
        assert client.xpending(w.keys.stream("work"), "gate")["pending"] == 0
        # the running aggregate, before the batch completes too: exactly the distinct items folded so far
        got = w.aggregate(OPERATORS)
        assert got == approx(python_aggregate([items[i] for i in sorted(arrived)])), f"step {step}"
        complete = step >= close_at and arrived | dead >= set(range(len(items)))
        assert len(w.outputs()) == (1 if complete else 0), f"step {step}"
        if complete and fired is None:
            fired = (set(arrived), set(dead))

    assert fired is not None
    [final] = w.outputs()
    [event] = w.events()
    failed = sorted(ids[i] for i in fired[1] - fired[0])  # a late arrival after the barrier is not "failed"
    assert final.data["final"] is True and final.data["items"] == len(ids) and final.data["batch"] == w.batch
    assert final.data["failed"] == failed == event["failed"] and final.data["done"] == len(fired[0])
    assert final.data["aggregate"] == approx(python_aggregate([items[i] for i in sorted(fired[0])]))
    assert barrier_state(client, w.keys, "gate", w.batch)["late"] == len(arrived - fired[0])
    bad = {ids[i] for i, d in enumerate(items) if is_bad(d)}
    assert {WorkItem.decode({b"item": f[b"item"]}).id for _, f in client.xrange(w.keys.dead_letters("gate"))} == bad
    # late duplicates of everything change nothing
    for i in arrived:
        w.publish(ids[i], items[i])
    w.restart()
    w.settle()
    assert w.aggregate(OPERATORS) == approx(python_aggregate([items[i] for i in sorted(arrived)]))
    assert len(w.outputs()) == 1 and len(w.events()) == 1


# -- the operators, one by one ------------------------------------------------------------------------------------


def run_batch(client: redis.Redis, settings: Settings, fold: dict[str, Any], data: list[dict[str, Any]],
              **options: Any) -> tuple[World, WorkItem]:
    w = World(client, settings, reduce_pipeline(fold, **options))
    ids = [f"d{i}" for i in range(len(data))]
    w.dispatch(ids)
    w.close(len(ids))
    for i, d in zip(ids, data, strict=True):
        w.publish(i, d)
    w.settle()
    [final] = w.outputs()
    return w, final


def test_count_true_and_expression(client: redis.Redis, settings: Settings) -> None:
    data = [{"n": 1}, {"n": 5}, {"n": "5"}, {}, {"n": 3, "ok": True}]
    _, final = run_batch(client, settings, {"all": {"count": True}, "big": {"count": "data.n > `2`"},
                                            "ok": {"count": "data.ok"}, "has": {"count": "data.n"}}, data)
    assert final.data["aggregate"] == {"all": 5, "big": 2, "ok": 1, "has": 4}


def test_sum_of_numbers_lists_objects_and_floats(client: redis.Redis, settings: Settings) -> None:
    data = [{"n": 1, "ns": [1, 2], "o": {"a": 1, "b": 0.5}, "f": 0.1},
            {"n": 0.5, "ns": [], "o": {"a": 2}, "f": 0.2},
            {"n": 2, "ns": [0.25, 1], "o": {"c": -3}, "f": 0.3},
            {"n": -4, "o": {}, "f": 1e-9}]
    _, final = run_batch(client, settings, {"n": {"sum": "data.n"}, "ns": {"sum": "data.ns"},
                                            "o": {"sum": "data.o"}, "f": {"sum": "data.f"},
                                            "none": {"sum": "data.missing"}}, data)
    agg = final.data["aggregate"]
    assert agg["n"] == -0.5 and agg["ns"] == 4.25 and agg["none"] == 0
    assert agg["o"] == {"a": 3, "b": 0.5, "c": -3} and type(agg["o"]["a"]) is int
    assert agg["f"] == pytest.approx(0.6 + 1e-9, rel=1e-15)


def test_integer_sums_stay_exact_then_go_on_in_floats(client: redis.Redis, settings: Settings) -> None:
    """Integers add exactly (also past 2**53); a field that got a fraction goes on as a float; a sum past int64
    goes on exactly, in decimal (router.reduce's numeric rule; tests/integration/test_reduce_hostile.py)."""
    data = [{"n": 2**53, "m": 2**62 + 1}, {"n": 1, "m": 2**62 + 1}, {"n": 1.5, "m": 2}]
    _, final = run_batch(client, settings, {"n": {"sum": "data.n"}, "m": {"sum": "data.m"}}, data)
    assert final.data["aggregate"]["m"] == 2**63 + 4
    assert final.data["aggregate"]["n"] == pytest.approx(2**53 + 2.5)
    _, final = run_batch(client, settings, {"n": {"sum": "data.n"}}, [{"n": 2**53}, {"n": 1}])
    assert final.data["aggregate"]["n"] == 2**53 + 1


def test_histogram_of_values_lists_and_buckets(client: redis.Redis, settings: Settings) -> None:
    data = [{"c": "red", "t": ["a", "b", "a"], "s": 0}, {"c": "blue", "t": [], "s": 9.5},
            {"c": "red", "t": ["b", None], "s": -1}, {"c": 3, "t": "a", "s": 2}, {"c": None, "s": 10},
            {"c": False, "s": 1.999}]
    _, final = run_batch(client, settings, {"c": {"histogram": "data.c"}, "t": {"histogram": "data.t"},
                                            "s": {"histogram": "data.s", "buckets": [0, 2, 10]},
                                            "never": {"histogram": "data.missing"}}, data)
    assert final.data["aggregate"] == {"c": {"3": 1, "blue": 1, "false": 1, "red": 2}, "t": {"a": 3, "b": 2},
                                       "s": {"<0": 1, "[0,2)": 2, "[2,10)": 2, ">=10": 1}, "never": {}}


def test_top_k_orders_by_count_then_key(client: redis.Redis, settings: Settings) -> None:
    words = [{"w": {"b": 3, "a": 1, "c": 5}}, {"w": {"a": 2, "d": 3, "e": 1}}, {"w": {"f": 9}}]
    _, final = run_batch(client, settings, {"w": {"sum": "data.w"}, "tag": {"histogram": "data.tag"},
                                            "n": {"count": True}},
                         [*words, {"tag": "y"}, {"tag": "x"}, {"tag": "z"}, {"tag": "y"}], top=4)
    assert final.data["top"] == {"w": [["f", 9], ["c", 5], ["a", 3], ["b", 3]],
                                 "tag": [["y", 2], ["x", 1], ["z", 1]]}  # no top of a number


@pytest.mark.parametrize("bad", [{"n": "two"}, {"n": [1, "x"]}, {"n": {"a": "b"}}, {"n": 10**400},
                                 {"n": True}])
def test_a_malformed_value_dead_letters_the_item_and_the_batch_completes(client: redis.Redis,
                                                                         settings: Settings,
                                                                         bad: dict[str, Any]) -> None:
    w, final = run_batch(client, settings, {"n": {"sum": "data.n"}, "all": {"count": True}},
                         [{"n": 2}, bad, {"n": 3}])
    assert final.data["aggregate"] == {"n": 5, "all": 2}  # nothing of the bad item, not even its count
    assert final.data["failed"] == ["d1"] and final.data["done"] == 2 and final.data["items"] == 3
    [(_, letter)] = client.xrange(w.keys.dead_letters("gate"))
    assert b"reduce: sum n" in letter[b"reason"] and b"not a finite number" in letter[b"reason"]
    states = Progress(client, w.keys)
    assert states.state_of("d1") == DEAD and states.state_of("d0") == DONE
    [event] = w.events()
    assert event["failed"] == ["d1"] and event["kind"] == "reduce"


# -- running aggregate and the written file ----------------------------------------------------------------------


def test_running_aggregate_and_the_written_file(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out"
    w = World(client, settings.model_copy(update={"out_dir": out}),
              reduce_pipeline({"words": {"sum": "data.words"}, "n": {"count": True}}, write="totals.json",
                              every="1ms"))
    path = out / "totals.json"
    ids = ["a", "b", "c"]
    w.dispatch(ids)
    w.settle()
    assert not path.exists()  # nothing folded yet
    w.publish("a", {"words": {"x": 2}})
    w.settle()
    running = json.loads(path.read_text())
    assert running["final"] is False and running["aggregate"] == {"words": {"x": 2}, "n": 1}
    assert w.aggregate({"words": "sum", "n": "count"}) == {"words": {"x": 2}, "n": 1}
    w.close(3)  # the listing is complete; c is still out
    w.publish("b", {"words": {"x": 1, "y": 1}})
    time.sleep(0.002)
    w.settle()
    running = json.loads(path.read_text())
    assert running["final"] is False and running["aggregate"] == {"words": {"x": 3, "y": 1}, "n": 2}
    assert running["done"] == 2 and w.outputs() == []
    w.publish("c", {"words": {"z": 1}})
    w.settle()
    final = json.loads(path.read_text())
    assert final["final"] is True and final["aggregate"] == {"words": {"x": 3, "y": 1, "z": 1}, "n": 3}
    assert final["items"] == 3 and final["failed"] == [] and final == w.outputs()[0].data
    assert not list(out.glob(".*tmp"))  # replaced atomically
    # the next batch of this pipeline finds nothing new: its empty aggregate does not overwrite the file
    empty = batches.new_batch_id()
    batches.announce(client, w.keys, empty)
    batches.close(client, w.keys, empty, 0)
    w.settle()
    assert [o.batch for o in w.outputs()] == [w.batch, empty]
    assert json.loads(path.read_text()) == final


# -- sharded reducers merged downstream -----------------------------------------------------------------------------


def test_sharded_reducers_merge_into_the_single_reducers_result(client: redis.Redis, settings: Settings,
                                                                  tmp_path: Path) -> None:
    """map -> shard into 2 -> a reducer per shard -> merge -> a reduce summing the partials; and beside it one
    reduce over all of `map`. Some items are dead-lettered at `map`, some delivered twice, one reducer crashes."""
    fold = {"words": {"sum": "data.words"}, "n": {"count": True}, "tags": {"histogram": "data.tag"},
            "size": {"sum": "data.size"}}
    merged = {"words": {"sum": "data.aggregate.words"}, "n": {"sum": "data.aggregate.n"},
              "tags": {"sum": "data.aggregate.tags"}, "size": {"sum": "data.aggregate.size"}}
    pipeline = make_pipeline({
        "map": {"work": {"input": "source", "worker": "noop"}},
        "split": {"shard": {"input": "map", "key": "name", "shards": 2}},
        "part-0": {"reduce": {"input": "split.0", "fold": fold}},
        "part-1": {"reduce": {"input": "split.1", "fold": fold}},
        "parts": {"merge": {"inputs": ["part-0", "part-1"]}},
        "total": {"reduce": {"input": "parts", "fold": merged, "write": "total.json", "every": "1ms"}},
        "single": {"reduce": {"input": "map", "fold": fold}},
        "last": {"work": {"input": "total", "worker": "noop"}},
        "last-single": {"work": {"input": "single", "worker": "noop"}}})
    out = tmp_path / "out"
    w = World(client, settings.model_copy(update={"out_dir": out}), pipeline, upstream="map", stage="single")
    s = w.settings
    ids = [f"doc-{i}" for i in range(40)]
    data = {i: {"words": {"a": n % 3 + 1, f"w{n % 7}": 2}, "tag": ["red", "blue", "green"][n % 3],
                "size": n / 4} for n, i in enumerate(ids)}
    w.dispatch(ids)
    dead = {ids[n] for n in (3, 17, 18)}
    arrive = [i for i in ids if i not in dead]
    for i in arrive[:30]:
        w.publish(i, data[i], to="map")
    for i in arrive[:5]:
        w.publish(i, data[i], to="map")  # duplicates
    sharder = build_router(client, s, "split", pipeline.stages["split"].body)
    merger = build_router(client, s, "parts", pipeline.stages["parts"].body)
    parts = [build_barrier(client, s, pipeline, f"part-{k}") for k in (0, 1)]
    total = build_barrier(client, s, pipeline, "total")
    single = w.barrier

    def steps(n: int = 3) -> None:
        for _ in range(n):
            sharder.step(0)
            for stage in (*parts, merger, total, single):
                stage.step(0)
            for b in (*parts, total, single):
                b.check_recent()

    steps()
    ops = {name: next(iter(f)) for name, f in fold.items()}
    running = [w.aggregate(ops, f"part-{k}")["n"] for k in (0, 1)]
    assert running[0] and running[1] and sum(running) == 30  # both shards fold while the map runs
    # a reducer of shard 0 reads and dies; its restart reclaims
    dying = build_barrier(client, s, pipeline, "part-0", consumer="dying")
    for i in arrive[30:]:
        w.publish(i, data[i], to="map")
    sharder.step(0)
    dying.consumer.read(3, block_ms=0)
    time.sleep(0.003)
    parts[0] = build_barrier(client, s, pipeline, "part-0")
    steps()
    assert w.outputs("part-0") == [] and w.outputs("total") == []  # the listing is not closed
    running = json.loads((out / "total.json").read_text()) if (out / "total.json").exists() else None
    assert running is None  # no partial has arrived at the total yet
    w.close(len(ids))
    steps()
    assert w.outputs("total") == []  # three items are still out: neither partial fires
    for i in sorted(dead):
        w.dead_letter(i)
    steps(4)
    [single_out] = w.outputs("single")
    [p0], [p1] = w.outputs("part-0"), w.outputs("part-1")
    [total_out] = w.outputs("total")
    want = {"words": dict(sum((Counter(data[i]["words"]) for i in arrive), Counter())), "n": len(arrive),
            "tags": dict(Counter(data[i]["tag"] for i in arrive)), "size": sum(data[i]["size"] for i in arrive)}
    assert single_out.data["aggregate"] == approx(want)
    assert total_out.data["aggregate"] == approx(single_out.data["aggregate"])
    assert p0.data["aggregate"]["n"] + p1.data["aggregate"]["n"] == len(arrive)
    assert p0.data["aggregate"]["n"] and p1.data["aggregate"]["n"]  # both shards had work
    assert total_out.data["items"] == 2 and total_out.data["done"] == 2
    assert single_out.data["failed"] == sorted(dead) == total_out.data["failed"]
    assert p0.data["failed"] == sorted(dead) == p1.data["failed"]  # each partial reports them all
    written = json.loads((out / "total.json").read_text())
    assert written["final"] is True and written["aggregate"] == total_out.data["aggregate"]
    assert barrier_state(client, w.keys, "total", w.batch)["emitted"]
    assert not math.isnan(written["aggregate"]["size"])


def test_a_merging_reduce_waits_for_its_partials_not_for_dead_items(client: redis.Redis, settings: Settings) -> None:
    """The total waits for one partial per sharded reducer: items dead-lettered upstream are no partials (their
    count must not stand in for a partial that has not come), and a bad value dead-lettered at one shard's reducer
    is not waited for by the other one."""
    fold = {"n": {"sum": "data.n"}, "c": {"count": True}}
    pipeline = make_pipeline({
        "map": {"work": {"input": "source", "worker": "noop"}},
        "split": {"shard": {"input": "map", "key": "name", "shards": 2}},
        "part-0": {"reduce": {"input": "split.0", "fold": fold}},
        "part-1": {"reduce": {"input": "split.1", "fold": fold}},
        "parts": {"merge": {"inputs": ["part-0", "part-1"]}},
        "total": {"reduce": {"input": "parts", "fold": {"n": {"sum": "data.aggregate.n"},
                                                        "c": {"sum": "data.aggregate.c"}}}},
        "last": {"work": {"input": "total", "worker": "noop"}}})
    w = World(client, settings, pipeline, upstream="map", stage="total")
    s = w.settings
    ids = [f"doc-{i}" for i in range(12)]
    w.dispatch(ids)
    w.close(len(ids))
    sharder = build_router(client, s, "split", pipeline.stages["split"].body)
    merger = build_router(client, s, "parts", pipeline.stages["parts"].body)
    parts = [build_barrier(client, s, pipeline, f"part-{k}") for k in (0, 1)]

    def steps() -> None:
        for _ in range(3):
            for stage in (sharder, *parts, merger, w.barrier):
                stage.step(0)
            for b in (*parts, w.barrier):
                b.check_recent()

    for i in ids[:3]:  # more items dead-lettered upstream than there are partials
        w.dead_letter(i)
    w.publish(ids[3], {"n": "not a number"}, to="map")  # dead-lettered at the reducer of its shard
    steps()
    assert w.outputs("total") == [] and w.events() == [], "the total fired on dead items, with no partial"
    for i in ids[4:]:
        w.publish(i, {"n": int(i.split("-")[1])}, to="map")
    steps()
    assert len(w.outputs("part-0")) == 1 and len(w.outputs("part-1")) == 1, "a reducer waits for its sibling's bad item"
    [total] = w.outputs("total")
    assert total.data["aggregate"] == {"n": sum(range(4, 12)), "c": 8} and total.data["done"] == 2
    assert total.data["failed"] == sorted(ids[:4])  # the items that failed on the way are reported
