"""The sharder: deterministic (the same key lands on the same shard in another process and after a restart),
balanced within a stated bound, and spilling an unhealthy shard's items to healthy ones until it heals."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from services.core import Keys, Settings, WorkItem
from services.core.spec_routers import ShardSpec
from services.router import Router, Sharder, build_router, shard_of

REPO = Path(__file__).resolve().parents[2]

# Chi-square critical values at p = 0.001 by degrees of freedom (shards - 1): a fair hash exceeds them once in
# a thousand key sets. The keys are seeded, so the test is deterministic.
CHI2_P001 = {2: 13.816, 3: 16.266, 7: 24.322}


def add(client: redis.Redis, keys: Keys, items: list[WorkItem]) -> None:
    pipe = client.pipeline(transaction=False)
    for item in items:
        pipe.xadd(keys.stream("in"), item.encode())
    pipe.execute()


def drain(router: Router) -> None:
    while router.step() or not router.caught_up():
        pass


def placement(client: redis.Redis, keys: Keys, shards: int) -> dict[str, int]:
    """item id -> shard it was routed to."""
    return {WorkItem.decode(f).id: shard for shard in range(shards)
            for _, f in client.xrange(keys.stream(f"zones.{shard}"))}


def test_same_key_same_shard_in_another_process_and_after_a_restart(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    spec = ShardSpec(input="in", key="data.user", shards=4, spill=False)
    users = [f"user-{i}" for i in range(200)]
    first = build_router(client, settings, "zones", spec, server_side=True)
    add(client, keys, [WorkItem(id=f"a-{u}", data={"user": u}) for u in users])
    drain(first)
    del first  # "restart": a new router, Python path, in a new process with another hash seed
    add(client, keys, [WorkItem(id=f"b-{u}", data={"user": u}) for u in users])
    code = ("import sys; from services.core import Settings; from services.core.spec_routers import ShardSpec;"
            "from services.router import build_router;"
            "r = build_router(__import__('redis').Redis.from_url(sys.argv[1]), Settings(redis_url=sys.argv[1],"
            " pipeline=sys.argv[2]), 'zones', ShardSpec.model_validate_json(sys.argv[3]), server_side=False)\n"
            "while r.step() or not r.caught_up(): pass")
    subprocess.run([sys.executable, "-c", code, settings.redis_url or "", settings.pipeline, spec.model_dump_json()],
                   cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True, timeout=60)
    where = placement(client, keys, 4)
    assert len(where) == 400
    for u in users:
        assert where[f"a-{u}"] == where[f"b-{u}"] == shard_of(u, 4)


@pytest.mark.parametrize("shards", [3, 4, 8])
def test_balanced_within_a_chi_square_bound(client: redis.Redis, settings: Settings, shards: int) -> None:
    keys, n = Keys(settings.pipeline), 10_000
    rng = random.Random(shards)
    router = build_router(client, settings, "zones", ShardSpec(input="in", key="data.k", shards=shards,
                                                               spill=False))
    add(client, keys, [WorkItem(id=f"i{i}", data={"k": f"{rng.getrandbits(64):016x}"}) for i in range(n)])
    drain(router)
    counts = [client.xlen(keys.stream(f"zones.{s}")) for s in range(shards)]
    expected = n / shards
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    sigma = (expected * (1 - 1 / shards)) ** 0.5
    assert sum(counts) == n
    assert chi2 < CHI2_P001[shards - 1], (counts, chi2)
    assert max(abs(c - expected) for c in counts) <= 4 * sigma, counts  # and no shard beyond 4 sigma


class Downstream:
    """Readers of the shard streams: a consumer counts as seen when it is served an entry (Redis 6.2)."""

    def __init__(self, client: redis.Redis, keys: Keys, shards: int) -> None:
        self.client, self.keys, self.shards = client, keys, shards
        for s in range(shards):
            client.xgroup_create(keys.stream(f"zones.{s}"), "work", id="$", mkstream=True)

    def touch(self, *shards: int) -> None:
        for s in shards:
            assert self.client.xreadgroup("work", f"w{s}", {self.keys.stream(f"zones.{s}"): ">"}, count=1)

    def leave(self, shard: int) -> None:
        self.client.xgroup_delconsumer(self.keys.stream(f"zones.{shard}"), "work", f"w{shard}")


def route(client: redis.Redis, keys: Keys, router: Router, prefix: str, n: int = 200) -> dict[str, int]:
    before = set(placement(client, keys, 3))
    add(client, keys, [WorkItem(id=f"{prefix}{i}", data={"user": f"u{i}"}) for i in range(n)])
    assert router.step() == n
    return {k: v for k, v in placement(client, keys, 3).items() if k not in before}


def spilled_metric(settings: Settings, shard: int) -> float:
    return REGISTRY.get_sample_value("batchmesh_items_spilled_total", {
        "pipeline": settings.pipeline, "stage": "zones", "shard": str(shard)}) or 0.0


TIMEOUT_MS = 3000  # a consumer idle this long is gone; generous: stalls past 1 s were seen on a loaded machine
HOME = {f"u{i}": shard_of(f"u{i}", 3) for i in range(200)}


def sharder(client: redis.Redis, settings: Settings, server_side: bool, **spec: int) -> Sharder:
    router = build_router(client, settings, "zones", ShardSpec(input="in", key="data.user", shards=3, **spec),
                          server_side=server_side, consumer_timeout_ms=TIMEOUT_MS)
    assert isinstance(router, Sharder)
    router.health_check.interval_s = 0  # evaluate before every step (the default is once a second)
    return router


def at_home(placed: dict[str, int], prefix: str, *, unless: int | None = None) -> bool:
    return all(placed[f"{prefix}{i}"] == HOME[f"u{i}"] for i in range(200) if HOME[f"u{i}"] != unless)


@pytest.mark.parametrize("server_side", [True, False])
def test_spills_while_a_shard_is_unhealthy_and_heals(
    client: redis.Redis, settings: Settings, server_side: bool
) -> None:
    keys = Keys(settings.pipeline)
    router = sharder(client, settings, server_side, max_backlog=2000)
    down = Downstream(client, keys, 3)
    assert at_home(route(client, keys, router, "a"), "a")  # young entries, nobody seen yet: all healthy
    down.touch(0, 1, 2)

    down.leave(1)  # shard 1's consumer is gone and its entries wait: its new items spill, evenly, to 0 and 2
    time.sleep(TIMEOUT_MS / 1000 + 0.1)
    down.touch(0, 2)
    sick = route(client, keys, router, "b")
    assert router.healthy == [True, False, True]
    moved = [i for i in range(200) if HOME[f"u{i}"] == 1]
    assert at_home(sick, "b", unless=1) and {sick[f"b{i}"] for i in moved} == {0, 2}
    assert int(client.hget(keys.stage_stats("zones"), "spilled")) == len(moved)
    assert spilled_metric(settings, 1) == len(moved)
    down.touch(0, 2)
    again = route(client, keys, router, "c")  # deterministic while the health is the same
    assert [again[f"c{i}"] for i in moved] == [sick[f"b{i}"] for i in moved]

    down.touch(1)  # a consumer is back: the shard heals and gets its own items again
    assert at_home(route(client, keys, router, "d"), "d")
    assert router.healthy == [True, True, True]

    pipe = client.pipeline(transaction=False)
    for i in range(2000):  # a backlog past max_backlog (entries nobody acknowledges): 2 spills
        pipe.xadd(keys.stream("zones.2"), {"item": json.dumps({"id": f"filler-{i}"})})
    pipe.execute()
    down.touch(0, 1, 2)
    late = route(client, keys, router, "e")
    assert router.healthy == [True, True, False]
    assert at_home(late, "e", unless=2) and all(late[f"e{i}"] != 2 for i in range(200))
    client.xtrim(keys.stream("zones.2"), maxlen=0)  # its consumers caught up (and trimmed)
    down.touch(0, 1)
    assert at_home(route(client, keys, router, "f"), "f")


@pytest.mark.parametrize("server_side", [True, False])
def test_waiting_work_nobody_takes_is_unhealthy_and_nothing_spills_when_no_shard_is_healthy(
    client: redis.Redis, settings: Settings, server_side: bool
) -> None:
    keys = Keys(settings.pipeline)
    router = sharder(client, settings, server_side)
    assert at_home(route(client, keys, router, "a"), "a")  # no reader at all yet, but nothing waited long
    time.sleep(TIMEOUT_MS / 1000 + 0.1)  # now it did, on every shard: none is healthy, so nothing can spill
    assert at_home(route(client, keys, router, "b"), "b")
    assert router.healthy == [False, False, False]
    down = Downstream(client, keys, 3)  # readers arrive (a group made at "$" has nothing waiting yet)
    assert at_home(route(client, keys, router, "c"), "c")
    assert router.healthy == [True, True, True]
    time.sleep(TIMEOUT_MS / 1000 + 0.1)
    down.touch(0, 2)  # 1 takes nothing
    placed = route(client, keys, router, "d")
    assert router.healthy == [True, False, True]
    assert at_home(placed, "d", unless=1) and all(placed[f"d{i}"] != 1 for i in range(200))
