"""Breaker (issue 12 review): a reduce folding a backlog on its fold thread while the next part is read
(services.router.barrier._take_backlog), two replicas, their connections killed again and again (`CLIENT KILL`:
a fold call or a read cut off with its reply unread, on either thread) and Redis frozen past their command timeout
(a busy script), while items keep arriving. Exactly once: the aggregate is the exact sum, the batch fires once
and final, nothing pending, nothing dead-lettered. Real Redis, real role threads (run_barrier)."""

from __future__ import annotations

import collections
import random
import threading
from pathlib import Path

import redis
from test_breaker_worker_faults import storm

from services.core import Keys, Progress, Settings, WorkItem, list_dead_letters
from services.core.barriers import aggregate
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router.run import run_barrier

N = 12_000
WORDS = ["a", "b", "c", "d", "e", "f", "g"]


def _produce(client: redis.Redis, stream: str, items: list[WorkItem], stop: threading.Event) -> None:
    for start in range(0, len(items), 300):
        pipe = client.pipeline(transaction=False)
        for item in items[start:start + 300]:
            pipe.xadd(stream, item.encode())
        pipe.execute()
        if stop.wait(0.02):
            return


def test_a_reduce_folding_a_backlog_stays_exact_through_killed_connections(client: redis.Redis, settings: Settings,
                                                                           tmp_path: Path) -> None:
    name = settings.pipeline
    keys = Keys(name)
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
        "stages": {"work": {"work": {"input": "source", "worker": "noop"}},
                   "gate": {"reduce": {"input": "work", "fold": {"files": {"count": True},
                                                                   "total": {"sum": "data.n"},
                                                                   "words": {"sum": "data.w"}}}},
                   "after": {"work": {"input": "gate", "worker": "noop"}}}})
    ours = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "client_name": "breaker"}))
    batch = batches.new_batch_id()
    batches.announce(ours, keys, batch)
    ids = [f"d{i}" for i in range(N)]
    Dispatcher(ours, keys, Progress(ours, keys), batch=batch).dispatch([{"name": i} for i in ids])
    batches.close(ours, keys, batch, N)
    rng = random.Random(7)
    items, words, total = [], collections.Counter(), 0
    for i in ids:
        n, w = rng.randint(0, 9), {x: rng.randint(1, 5) for x in rng.sample(WORDS, 3)}
        items.append(WorkItem(id=i, data={"n": n, "w": w}, batch=batch))
        total += n
        words.update(w)
    ours.xgroup_create(keys.stream("work"), "gate", id="0", mkstream=True)
    cfg = settings.model_copy(update={"redis_timeout_s": 0.2, "batch_size": 100, "max_deliveries": 1000,
                                      "data_dir": tmp_path / "data"})
    stop, fault_stop, faults = threading.Event(), threading.Event(), []
    reducers = [threading.Thread(target=run_barrier, args=(pipeline, "gate", cfg, stop), daemon=True)
                for _ in range(2)]
    producer = threading.Thread(target=_produce, args=(ours, keys.stream("work"), items, fault_stop), daemon=True)
    # a second fire, if there were one, has a second to show (no assert on time)
    storm(ours, reducers, producer, stop, fault_stop, faults, lambda: ours.xlen(keys.stream("gate")), settle_s=1.0)
    try:
        assert len(faults) >= 20 and not producer.is_alive()
        assert not any(r.is_alive() for r in reducers)
        agg = aggregate(ours, keys, "gate", batch, {"files": "count", "total": "sum", "words": "sum"})
        assert agg["files"] == N and agg["total"] == total
        assert agg["words"] == dict(words)
        outputs = [WorkItem.decode(f).data for _, f in ours.xrange(keys.stream("gate"))]
        assert len(outputs) == 1 and outputs[0]["final"] and outputs[0]["failed_count"] == 0, outputs[:2]
        assert ours.xpending(keys.stream("work"), "gate")["pending"] == 0
        assert list_dead_letters(ours, keys, "gate") == []
    finally:
        ours.close()
