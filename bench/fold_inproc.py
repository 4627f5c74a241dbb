"""(d) diagnostics: one reducer's fold in this process, without the map's publisher competing for the CPU.

    python -m bench.fold_inproc [--n 20000] [--repeat 3] [--batch-size 256] [--profile out.prof] [--stats]

N map results of bench.barriers' workload (10 words/item) are put on the barrier's input first; then the reduce
(built as `batchmesh router` builds it) steps until its aggregate is out. Prints per repetition: the wall rate,
this process's CPU per item (every thread), redis-server's CPU per item (INFO cpu, used_cpu_user + sys) and the
rate those two alone would allow, one after the other. CPU per item is what an A/B on a shared machine can still
compare (run it with PYTHONPATH set to each tree, interleaved); --stats prints Redis' commandstats, --profile the
last repetition's cProfile (the stepping thread only)."""
from __future__ import annotations

import argparse
import cProfile
import json
import sys
import time
from typing import Any

import redis

from bench.barriers import Workload, _item, _spec
from bench.baselines.redis_server import local_redis
from bench.common import drop_pipeline, pipeline_name
from services.core import Keys, Progress, Settings, WorkItem
from services.core.spec import Pipeline
from services.manager import batches
from services.manager.diff import Dispatcher
from services.router.run import build_barrier


def cpu(client: redis.Redis) -> float:
    """redis-server's CPU seconds so far (user + sys)."""
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def once(url: str, load: Workload, results: list[bytes], expected: Any, batch_size: int,
         profile: str | None = None) -> dict[str, float]:
    """One batch of load.n pre-filled, folded by one reduce stepped here until its aggregate is out."""
    client = redis.Redis.from_url(url)
    name = pipeline_name("fh")
    keys = Keys(name)
    pipeline = Pipeline.model_validate(_spec(name, "reduce"))
    settings = Settings(redis_url=url, pipeline=name, batch_size=batch_size)
    barrier = build_barrier(client, settings, pipeline, "gate")
    batch = batches.new_batch_id()
    batches.announce(client, keys, batch)
    d = Dispatcher(client, keys, Progress(client, keys), batch=batch)
    for first in range(0, load.n, 1000):
        d.dispatch([{"name": f"doc-{i}"} for i in range(first, min(first + 1000, load.n))])
    batches.close(client, keys, batch, load.n)
    items = [_item(i, r, batch) for i, r in enumerate(results)]
    for first in range(0, len(items), 1000):
        pipe = client.pipeline(transaction=False)
        for it in items[first:first + 1000]:
            pipe.xadd(keys.stream("map"), {b"item": it})
        pipe.execute()
    out = keys.stream("gate")
    c0, r0, t0 = time.process_time(), cpu(client), time.perf_counter()
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    steps = 0
    while not client.xlen(out):
        barrier.step(0)
        steps += 1
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    t1, c1, r1 = time.perf_counter(), time.process_time(), cpu(client)
    data = WorkItem.model_validate_json(client.xrange(out)[0][1][b"item"]).data
    assert data["done"] == load.n and data["aggregate"]["words"] == dict(expected), data["done"]
    drop_pipeline(client, name)
    client.close()
    n = load.n
    return {"wall": n / (t1 - t0), "py_us": (c1 - c0) / n * 1e6, "redis_us": (r1 - r0) / n * 1e6, "steps": steps}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile")
    p.add_argument("--url")
    p.add_argument("--stats", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    load = Workload(a.n)
    results, expected = load.results()

    def go(url: str) -> None:
        for r in range(a.repeat):
            res = once(url, load, results, expected, a.batch_size, a.profile if r == a.repeat - 1 else None)
            cpu_rate = 1e6 / (res["py_us"] + res["redis_us"])
            print(json.dumps({**{k: round(v, 1) for k, v in res.items()}, "cpu_bound_rate": round(cpu_rate)}),
                  flush=True)

    def stats(url: str) -> None:
        c = redis.Redis.from_url(url)
        for k, v in sorted(c.info("commandstats").items(), key=lambda kv: -kv[1]["usec"])[:12]:
            print(f"{k:30} calls {v['calls']:8} usec {v['usec']:10} per_call {v['usec_per_call']:9.1f}")
    if a.url:
        go(a.url)
    else:
        with local_redis() as url:
            go(url)
            if a.stats:
                stats(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
