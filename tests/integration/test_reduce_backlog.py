"""A reduce under a backlog (services.router.barrier: reads on past one batch, decodes the light way, applies each
part on its fold thread while it reads the next) gives exactly what it gives reading everything at once: the same
aggregate, the same dead letters with the same reasons, the same output, progress and stage counters — whatever
mix of good items, duplicates (a different copy of a folded id), hostile numbers and malformed entries arrives."""

from __future__ import annotations

import uuid
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core import Keys, Progress, Settings, WorkItem, list_dead_letters
from services.core.barriers import aggregate
from services.core.item import encode_json
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router import build_barrier

FOLD = {"files": {"count": True}, "total": {"sum": "data.n"}, "words": {"sum": "data.w"}}
OPERATORS = {"files": "count", "total": "sum", "words": "sum"}
N = 12

GOOD = 8  # ids d0..d7 only ever bring numbers a fold takes; d8..d11 only copies it refuses (the batch then fires
# when every id is resolved, whatever the read boundaries: a refused copy of an id that also has a folded copy would
# make the fire depend on which of the two a read brought first, as it always has)
# integers (exact at any size): a sum holding a fraction is a double, rounded by the order of its additions
_good = st.integers(-5, 50) | st.sampled_from([10**30, -(10**25), 10**299, 2**63])
_bad = st.sampled_from([10**401, "NaN", True])
_good_op = st.tuples(st.integers(0, GOOD - 1), st.fixed_dictionaries({
    "n": _good, "w": st.dictionaries(st.sampled_from("abcd"), _good, max_size=3)}))
_bad_op = st.tuples(st.integers(GOOD, N - 1), st.fixed_dictionaries({"n": _bad}))
_junk = st.sampled_from([b"{", b"[1]", b'{"id":"","batch":"x"}', b'{"id":"d9","data":{"n":NaN}}', b"\xff\xfe"])
_ops = st.lists(_good_op | _bad_op | _junk, min_size=N, max_size=3 * N)


def run(client: redis.Redis, base: Settings, ops: list[Any], batch_size: int, gather: int) -> dict[str, Any]:
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": f"bl{uuid.uuid4().hex[:10]}", "source": {"path": "."},
        "stages": {"work": {"work": {"input": "source", "worker": "noop"}},
                   "gate": {"reduce": {"input": "work", "fold": FOLD}},
                   "after": {"work": {"input": "gate", "worker": "noop"}}}})
    keys = Keys(pipeline.name)
    batch = batches.new_batch_id()
    batches.announce(client, keys, batch)
    ids = [f"d{i}" for i in range(N)]
    Dispatcher(client, keys, Progress(client, keys), batch=batch).dispatch([{"name": i} for i in ids])
    batches.close(client, keys, batch, N)
    stream = keys.stream("work")
    for op in ops:
        raw = op if isinstance(op, bytes) else encode_json({"id": ids[op[0]], "data": op[1], "batch": batch})
        client.xadd(stream, {b"item": raw})
    for k, i in enumerate(ids):  # every id arrives at least once, or is refused: the batch fires
        client.xadd(stream, WorkItem(id=i, data={"n": 1 if k < GOOD else "NaN"}, batch=batch).encode())
    barrier = build_barrier(client, base.model_copy(update={"pipeline": pipeline.name, "batch_size": batch_size}),
                            pipeline, "gate", consumer="r-1")
    barrier.gather = gather  # type: ignore[misc]  # parts of a few entries: several in flight one after another
    while barrier.step(0):
        pass
    barrier.check_recent()
    outputs = [WorkItem.decode(f).data for _, f in client.xrange(keys.stream("gate"))]
    dead = sorted((d.item_id or "?", d.reason) for d in list_dead_letters(client, keys, "gate"))
    stats = {k.decode(): v.decode() for k, v in client.hgetall(keys.stage_stats("gate")).items()}
    return {"aggregate": aggregate(client, keys, "gate", batch, OPERATORS),
            "dead": dead,
            "outputs": [{k: v for k, v in o.items() if k != "batch"} for o in outputs],
            "states": [Progress(client, keys).state_of(i) for i in ids], "stats": stats,
            "pending": client.xpending(stream, "gate")["pending"]}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_ops)
def test_a_backlog_folds_exactly_as_one_read(client: redis.Redis, settings: Settings, ops: list[Any]) -> None:
    at_once = run(client, settings, ops, 1000, 0)
    assert run(client, settings, ops, 3, 7) == at_once
    assert run(client, settings, ops, 4, 2048) == at_once
    assert at_once["pending"] == 0 and len(at_once["outputs"]) == 1 and at_once["outputs"][0]["failed_count"] == 4
