"""Reduce vs join-then-aggregate: the time from the last map result to the final aggregate.

    python -m bench.reduce [--n 100000] [--rate 20000] [--repeat 3]

One batch of N items (the real manifest: Dispatcher + batches), map results published onto the barrier's input at
a paced map rate (each a small word-count object: 5 words of a 1,000-word vocabulary), the barrier a real
`batchmesh router` process. reduce: folds while the map runs, emits the final aggregate when the last item is in.
join-then-aggregate (the baseline, same run, same Redis): a join (`emit: items`) releases the batch when the last
item is in, then an aggregator reads the N items and folds them in Python. Each side is timed from the moment the
last map result was written (XADD returned) to the moment the aggregate is ready. Target: reduce <= 50 ms."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
import yaml

from services.core import Keys, Progress, WorkItem
from services.manager import batches
from services.manager.diff import Dispatcher

from .baselines.redis_server import local_redis
from .common import drop_pipeline, median, pipeline_name

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = [f"w{i}" for i in range(1000)]
BARRIERS = {
    "reduce": {"reduce": {"input": "map", "fold": {"words": {"sum": "data.counts"}, "files": {"count": True}}}},
    "join": {"join": {"input": "map", "emit": "items"}},
}


def spec(name: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
            "stages": {"map": {"work": {"input": "source", "worker": "noop"}}, "gate": BARRIERS[kind],
                       "next": {"work": {"input": "gate", "worker": "noop"}}}}  # someone reads the barrier's output


def map_results(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [WorkItem(id=f"doc-{i}", data={"counts": {w: rng.randint(1, 9) for w in rng.sample(VOCABULARY, 5)}})
            .model_dump_json(exclude_defaults=True).encode() for i in range(n)]


def run_once(url: str, kind: str, items: list[bytes], rate: float) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    name = pipeline_name(f"bench-{kind}")
    keys = Keys(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        path.write_text(yaml.safe_dump(spec(name, kind)))
        batch = batches.new_batch_id()
        batches.announce(client, keys, batch)
        n = len(items)
        Dispatcher(client, keys, Progress(client, keys), batch=batch).dispatch([{"name": f"doc-{i}"}
                                                                               for i in range(n)])
        batches.close(client, keys, batch, n)
        env = {**os.environ, "REDIS_URL": url, "BATCHMESH_LOG_LEVEL": "WARNING"}
        barrier = subprocess.Popen([sys.executable, "-m", "services.cli", "router", "--pipeline", str(path),
                                    "--stage", "gate"], cwd=ROOT, env=env)
        try:
            time.sleep(1.0)  # the barrier is up and idle, as in production
            stream, chunk = keys.stream("map"), 100
            began = time.perf_counter()
            for first in range(0, n, chunk):  # the map's results at the map's pace
                pipe = client.pipeline(transaction=False)
                for raw in items[first:first + chunk]:
                    pipe.xadd(stream, {b"item": raw[:-1] + f',"batch":"{batch}"}}'.encode()})
                pipe.execute()
                ahead = began + (first + chunk) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            last = time.perf_counter()
            ready = wait_aggregate(client, keys, kind, n)
        finally:
            barrier.terminate()
            barrier.wait(10)
    drop_pipeline(client, name)
    return {"latency_ms": (ready - last) * 1000, "map_s": last - began}


def wait_aggregate(client: redis.Redis, keys: Keys, kind: str, n: int) -> float:
    """Block until the aggregate is ready; returns that moment (perf_counter)."""
    out, cursor = keys.stream("gate"), "0-0"
    if kind == "reduce":
        client.xread({out: cursor}, block=120_000, count=1)
        return time.perf_counter()
    words: Counter[str] = Counter()
    seen = 0
    while seen < n:  # join-then-aggregate: the released items, folded here
        for _, entries in client.xread({out: cursor}, block=120_000, count=10_000) or []:
            for entry_id, fields in entries:
                words.update(WorkItem.model_validate_json(fields[b"item"]).data["counts"])
                cursor, seen = entry_id, seen + 1
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reduce", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=20_000, help="map results per second")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    items = map_results(args.n, seed=1)
    samples: dict[str, list[float]] = {"reduce": [], "join": []}
    with local_redis() as url:
        for rep in range(args.repeat):
            for kind in ("reduce", "join"):  # interleaved: drift hits both alike
                result = run_once(url, kind, items, args.rate)
                samples[kind].append(result["latency_ms"])
                print(f"run {rep + 1}/{args.repeat} {kind:6} last map item -> aggregate {result['latency_ms']:9.1f} ms"
                      f"  (map phase {result['map_s']:.1f} s)", file=sys.stderr, flush=True)
    ours, base = median(samples["reduce"]), median(samples["join"])
    print(f"N={args.n:,} at {args.rate:,.0f} map results/s, medians of {args.repeat}:")
    print(f"  reduce               {ours:9.1f} ms   (samples {[round(s, 1) for s in samples['reduce']]})")
    print(f"  join-then-aggregate  {base:9.1f} ms   (samples {[round(s, 1) for s in samples['join']]})")
    print(f"  ratio {base / ours:.1f}x faster; target reduce <= 50 ms: {'met' if ours <= 50 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
