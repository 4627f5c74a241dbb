"""Property tests of the five routers on a real Redis. Every example feeds the same random entries (valid items,
malformed ones, entries addressed to another stage) through the server-side (Lua) and the Python path, each in its
own pipeline namespace, and checks both against an independent model — so the two paths also agree with each
other, stream by stream and in order. Expressions are random *simple* JMESPath expressions (the ones that can run
server-side); numbers stay within 2**53, where Lua doubles are exact."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from typing import Any

import jmespath
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jmespath.visitor import TreeInterpreter

from services.core import Keys, Settings
from services.core.expressions import compile_expression, route_key, truthy
from services.core.spec_routers import (
    CopySpec,
    FilterSpec,
    MergeSpec,
    RouterSpec,
    ShardSpec,
    SplitSpec,
)
from services.router import Router, build_router, shard_hash

EXAMPLES = settings(max_examples=int(os.environ.get("ROUTER_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # ROUTER_EXAMPLES=500: a deep run
STAGE = "rt"
Entry = dict[bytes, bytes]

# -- random items -------------------------------------------------------------------------------------------
POOL = ["sms", "email", "", "1", 0, 1, 2.0, -1, True, False, None, [], {}, 3.5]
SCALARS = (st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5))
VALUES = st.sampled_from(POOL) | st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["ch", "n"]), inner,
                                                                         max_size=2), max_leaves=4)
DATA = st.dictionaries(st.sampled_from(["ch", "n", "flag", "x"]), VALUES, max_size=4)
IDS = st.sampled_from(["a", "b", "user-1", "ü"]) | st.text(min_size=1, max_size=8)
VALID = st.builds(lambda i, d, v: {"id": i, "data": d, **({"version": v} if v else {})}, IDS, DATA,
                  st.none() | st.sampled_from(["v1", "sms"]))
MALFORMED = st.sampled_from([
    b"not json", b"[]", b'"s"', b'{"id": 5}', b'{"id": ""}', b'{"data": {}}', b'{"id":"m","data":[]}',
    b'{"id":"m","data":[1]}', b'{"id":"m","data":null}', b'{"id":"m","data":"s"}', b'{"id":"m", "data" : [ ]}',
])


@st.composite
def entries(draw: st.DrawFn) -> list[Entry]:
    out: list[Entry] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["item"] * 8 + ["malformed", "no-item", "to-other", "to-us", "lax"]))
        if kind == "malformed":
            out.append({b"item": draw(MALFORMED)})
        elif kind == "no-item":
            out.append({b"other": b"x"})
        elif kind == "lax":  # not a valid work item (attempts), but a routable one: routers judge what they read
            out.append({b"item": json.dumps({"id": draw(IDS), "attempts": 3.5, "data": draw(DATA)}).encode()})
        else:
            entry = {b"item": json.dumps(draw(VALID), ensure_ascii=False).encode()}
            if kind.startswith("to-"):
                entry[b"to"] = STAGE.encode() if kind == "to-us" else b"someone-else"
            out.append(entry)
    return out


# -- random simple expressions ------------------------------------------------------------------------------
PATHS = st.sampled_from(["data.ch", "data.n", "data.flag", "data.x.ch", "id", "name", "version", "nope"])
LITERALS = (st.sampled_from(["sms", "email", "", 0, 1, 2, -1, 3.5, True, False, None])
            | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(alphabet="abcsm1 ", max_size=4))
NUMBERS = st.integers(-5, 5) | st.floats(-10, 10)


def lit(value: Any) -> str:
    return f"`{json.dumps(value)}`"


ATOMS = (PATHS | st.builds(lambda p, o, v: f"{p} {o} {lit(v)}", PATHS, st.sampled_from(["==", "!="]), LITERALS)
         | st.builds(lambda p, o, v: f"{p} {o} {lit(v)}", PATHS, st.sampled_from(["<", "<=", ">", ">="]), NUMBERS))
EXPRESSIONS = st.recursive(ATOMS, lambda e: st.builds(lambda a: f"!({a})", e)
                           | st.builds(lambda a, o, b: f"({a}) {o} ({b})", e, st.sampled_from(["&&", "||"]), e),
                           max_leaves=4)


# -- the model ------------------------------------------------------------------------------------------------
def model(batch: list[Entry]) -> tuple[list[tuple[bytes, dict[str, Any]]], list[bytes]]:
    """(routable entries as (raw item, document), raw items of the dead-lettered ones), in input order."""
    routable, dead = [], []
    for entry in batch:
        if entry.get(b"to", STAGE.encode()) != STAGE.encode():
            continue
        raw = entry.get(b"item", b"")
        try:
            item = json.loads(raw)
        except ValueError:
            item = None
        ok = isinstance(item, dict) and isinstance(item.get("id"), str) and 0 < len(item["id"]) <= 1024 \
            and isinstance(item.get("data", {}), dict)
        if not ok:
            dead.append(raw)
            continue
        doc = {"id": item["id"], "name": item["id"], "data": item.get("data", {}), "version": item.get("version"),
               "batch": item.get("batch")}
        routable.append((raw, doc))
    return routable, dead


class Lenient(TreeInterpreter):
    """Plain jmespath, except that ordering a string against a number is null instead of a TypeError."""

    def visit_comparator(self, node: dict[str, Any], value: Any) -> Any:
        try:
            return super().visit_comparator(node, value)
        except TypeError:
            return None


def search(expression: str, doc: dict[str, Any]) -> Any:
    return Lenient().visit(jmespath.compile(expression).parsed, doc)


# -- running both paths -------------------------------------------------------------------------------------
def run_both(client: redis.Redis, base: Settings, spec: RouterSpec, feeds: dict[str, list[Entry]],
             setup: Any = None) -> list[dict[str, Any]]:
    """Feed, route to the end on both paths, return per path: outputs by stream, dead letters, stats."""
    results = []
    for server_side in (True, False):
        s = base.model_copy(update={"pipeline": f"p{uuid.uuid4().hex[:10]}"})
        keys = Keys(s.pipeline)
        router = build_router(client, s, STAGE, spec, server_side=server_side)
        assert router.server_side is server_side
        if setup:
            setup(router)
        pipe = client.pipeline(transaction=False)
        for stream, batch in feeds.items():
            for fields in batch:
                pipe.xadd(keys.stream(stream), fields)
        pipe.execute()
        drain(router)
        results.append({
            "outputs": {o: [f[b"item"] for _, f in client.xrange(keys.stream(o))] for o in spec.outputs(STAGE)},
            "dead": [f[b"item"] for _, f in client.xrange(keys.dead_letters(STAGE))],
            "pending": sum(client.xpending(keys.stream(i), STAGE)["pending"] for i in spec.inputs),
            "stats": {k.decode(): int(v) for k, v in client.hgetall(keys.stage_stats(STAGE)).items()},
        })
        client.delete(*client.keys(f"{keys.prefix}*"))
    server, python = results
    assert server == python, "server-side and Python routers disagree"
    assert server["pending"] == 0
    return results


def drain(*routers: Router) -> None:
    while sum(r.step(0) for r in routers) or not all(r.caught_up() for r in routers):
        pass


# -- properties ---------------------------------------------------------------------------------------------
@EXAMPLES
@given(batch=entries(), branches=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True))
def test_copier_outputs_equal_the_input_on_every_branch(
    client: redis.Redis, settings: Settings, batch: list[Entry], branches: list[str]
) -> None:
    routable, dead = model(batch)
    for result in run_both(client, settings, CopySpec(input="in", to=branches), {"in": batch}):
        assert result["outputs"] == {f"{STAGE}.{b}": [raw for raw, _ in routable] for b in branches}
        assert result["dead"] == dead
        assert result["stats"].get("out", 0) == len(routable)


@EXAMPLES
@given(batch=entries(), where=EXPRESSIONS)
def test_filter_output_is_exactly_the_matching_subset(
    client: redis.Redis, settings: Settings, batch: list[Entry], where: str
) -> None:
    assume(compile_expression(where).simple)
    routable, dead = model(batch)
    keep = [raw for raw, doc in routable if truthy(search(where, doc))]
    for result in run_both(client, settings, FilterSpec(input="in", where=where), {"in": batch}):
        assert result["outputs"] == {STAGE: keep}
        assert result["dead"] == dead
        assert result["stats"].get("filtered", 0) == len(routable) - len(keep)


@EXAMPLES
@given(batch=entries(), by=EXPRESSIONS, routes=st.dictionaries(
    st.sampled_from(["sms", "email", "true", "false", "1", "0", "a", ""]), st.sampled_from(["r1", "r2", "other"]),
    max_size=4), default=st.sampled_from(["other", "rest"]))
def test_splitter_is_a_partition(
    client: redis.Redis, settings: Settings, batch: list[Entry], by: str, routes: dict[str, str], default: str
) -> None:
    assume(compile_expression(by).simple)
    spec = SplitSpec(input="in", by=by, routes=routes, default=default)
    routable, dead = model(batch)
    expected: dict[str, list[bytes]] = {o: [] for o in spec.outputs(STAGE)}
    for raw, doc in routable:
        key = route_key(search(by, doc))
        expected[f"{STAGE}.{routes.get(key, default) if key is not None else default}"].append(raw)
    for result in run_both(client, settings, spec, {"in": batch}):
        assert result["outputs"] == expected
        assert Counter(r for out in result["outputs"].values() for r in out) == Counter(r for r, _ in routable)
        assert result["dead"] == dead


@EXAMPLES
@given(batch=entries(), key=PATHS | EXPRESSIONS, shards=st.integers(1, 8))
def test_sharder_puts_every_item_on_its_hash_shard(
    client: redis.Redis, settings: Settings, batch: list[Entry], key: str, shards: int
) -> None:
    assume(compile_expression(key).simple)
    routable, dead = model(batch)
    expected: dict[str, list[bytes]] = {f"{STAGE}.{i}": [] for i in range(shards)}
    for raw, doc in routable:
        value = route_key(search(key, doc))
        home = shard_hash(doc["id"] if value is None else value)[0] % shards
        expected[f"{STAGE}.{home}"].append(raw)
    spec = ShardSpec(input="in", key=key, shards=shards, spill=False)
    for result in run_both(client, settings, spec, {"in": batch}):
        assert result["outputs"] == expected  # in input order per shard, so in order per key
        assert result["dead"] == dead


@EXAMPLES
@given(batch=entries(), health=st.lists(st.booleans(), min_size=2, max_size=6))
def test_sharder_spills_identically_on_both_paths(
    client: redis.Redis, settings: Settings, batch: list[Entry], health: list[bool]
) -> None:
    shards = len(health)
    healthy = [i for i, ok in enumerate(health) if ok]
    routable, _ = model(batch)
    expected: dict[str, list[bytes]] = {f"{STAGE}.{i}": [] for i in range(shards)}
    spilled = 0
    for raw, doc in routable:
        home_part, spill_part = shard_hash(doc["id"])
        target = home_part % shards
        if healthy and not health[target]:
            target, spilled = healthy[spill_part % len(healthy)], spilled + 1
        expected[f"{STAGE}.{target}"].append(raw)

    def fixed_health(router: Router) -> None:
        router.health_check.refresh = lambda force=False: health  # type: ignore[attr-defined]

    spec = ShardSpec(input="in", key="id", shards=shards)
    for result in run_both(client, settings, spec, {"in": batch}, setup=fixed_health):
        assert result["outputs"] == expected
        assert result["stats"].get("spilled", 0) == spilled


@EXAMPLES
@given(feeds=st.lists(entries(), min_size=1, max_size=4), per_input=st.none() | st.integers(1, 5))
def test_merger_output_is_the_multiset_union_in_order_per_input(
    client: redis.Redis, settings: Settings, feeds: list[list[Entry]], per_input: int | None
) -> None:
    inputs = [f"in{i}" for i in range(len(feeds))]
    spec = MergeSpec(inputs=inputs, per_input=per_input)
    models = [model(batch) for batch in feeds]
    for result in run_both(client, settings, spec, dict(zip(inputs, feeds, strict=True))):
        out = result["outputs"][STAGE]
        assert Counter(out) == Counter(raw for routable, _ in models for raw, _ in routable)
        assert Counter(result["dead"]) == Counter(raw for _, dead in models for raw in dead)
        for routable, _ in models:  # each input's items keep their order (items are unique enough: a subsequence)
            mine = [raw for raw, _ in routable]
            it = iter(out)
            assert all(any(raw == o for o in it) for raw in mine)
