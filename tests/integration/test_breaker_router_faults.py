"""Breaker (issue 12 review): server-side routers with two route calls in flight on one connection under a backlog
(services.router.base._server_step, core.wire), two replicas of a copy router as real role threads (run_router),
their connections killed again and again (`CLIENT KILL`: calls in flight lost together, a reply unread) and Redis
frozen past their command timeout (a busy script), while items keep arriving. Exactly once: every input entry on
each output once, nothing pending."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import redis
from test_breaker_worker_faults import storm

from services.core import Keys, Settings, WorkItem
from services.core.spec_routers import CopySpec
from services.router.run import run_router

N = 60_000


def _produce(client: redis.Redis, stream: str, stop: threading.Event) -> None:
    for start in range(0, N, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 1000):
            pipe.xadd(stream, WorkItem(id=f"i{i}", data={"n": i}).encode())
        pipe.execute()
        if stop.wait(0.02):
            return


def _ids(client: redis.Redis, key: str) -> Counter[str]:
    return Counter(WorkItem.decode(fields).id for _, fields in client.xrange(key))


def test_copy_replicas_route_every_entry_once_through_killed_connections(client: redis.Redis, settings: Settings,
                                                                         tmp_path: Path) -> None:
    keys = Keys(settings.pipeline)
    ours = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "client_name": "breaker"}))
    spec = CopySpec(input="in", to=["a", "b"])
    cfg = settings.model_copy(update={"redis_timeout_s": 0.2, "batch_size": 50, "data_dir": tmp_path / "data"})
    ours.xgroup_create(keys.stream("in"), "c", id="0", mkstream=True)
    stop, fault_stop, faults = threading.Event(), threading.Event(), []
    routers = [threading.Thread(target=run_router, args=(settings.pipeline, "c", spec, cfg, stop),
                                kwargs={"server_side": True}, daemon=True) for _ in range(2)]
    producer = threading.Thread(target=_produce, args=(ours, keys.stream("in"), fault_stop), daemon=True)
    storm(ours, routers, producer, stop, fault_stop, faults,
          lambda: (ours.xlen(keys.stream("c.a")) >= N and ours.xlen(keys.stream("c.b")) >= N
                   and not ours.xpending(keys.stream("in"), "c")["pending"]))
    try:
        assert len(faults) >= 20 and not producer.is_alive()
        assert not any(r.is_alive() for r in routers)
        expected = Counter(f"i{i}" for i in range(N))
        for out in ("c.a", "c.b"):
            got = _ids(ours, keys.stream(out))
            assert got == expected, (out, sum(got.values()), len(got), (got - expected).most_common(3))
        assert ours.xpending(keys.stream("in"), "c")["pending"] == 0
    finally:
        ours.close()
