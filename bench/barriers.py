"""(d) Barriers (issue 4): the time from the last map result to the final aggregate, reduce vs join-then-aggregate.

    python -m bench.barriers [--n 100000] [--repeat 3] [--rate 5000] [--words 10] [--vocabulary 5000]

One batch of N items through the real manifest path (batches.announce, the manager's Dispatcher, batches.close),
then a simulated map stage: this process publishes the N map results onto the barrier's input stream (`map`) in
pipelined chunks of 100 at --rate results/s. Each result is a word count of one document, {"counts": {word: n}}:
--words distinct words (Zipf-distributed over a --vocabulary-word vocabulary, counts 1-20). The barrier is a real
`batchmesh router` process (the containers' entry point: build_barrier -> run(stop)), started and warmed up with
a one-item batch before the clock. Timed from the moment the last map result's XADD returned to the moment the
aggregate is ready, per kind, interleaved (reduce, join, join-items, reduce, ...) so drift hits all alike:
- reduce: {words: {sum: data.counts}, files: {count: true}} folds while the map runs; ready = its final
  aggregate item appears on its output stream (a blocking XREAD).
- join (`emit: event`), the baseline: the map also records each result in the pipeline's results hash, as a sink
  does; ready = the batch-complete event appeared, then this process read the batch's N results (SMEMBERS of the
  manifest + HMGET), folded them in Python and XADDed the same aggregate.
- join-items (`emit: items`, information): ready = the N released items read off the join's stream, folded and
  the aggregate XADDed.
Also reported: the reduce's fold rate while the map runs (items folded/s, from the stage's `out` counter sampled
with every chunk) and its backlog at the last map result, plus one unpaced reduce run per repetition (the map
publishes as fast as it can): the reducer's capacity. Target: reduce <= 50 ms."""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

from services.core import Keys, Progress, WorkItem
from services.core.item import encode_json
from services.manager import batches
from services.manager.diff import Dispatcher

from .common import drop_pipeline, median, pipeline_name
from .report import Row, save, table

ROOT = Path(__file__).resolve().parents[1]
CAPACITY_TARGET = 30_000.0  # items/s one reducer folds (issue 12)
KINDS = ("reduce", "join", "join-items", "reduce-unpaced")
GATES: dict[str, dict[str, Any]] = {
    "reduce": {"reduce": {"input": "map", "fold": {"words": {"sum": "data.counts"}, "files": {"count": True}}}},
    "join": {"join": {"input": "map", "emit": "event"}},
    "join-items": {"join": {"input": "map", "emit": "items"}},
}
CHUNK = 100  # map results per pipelined round trip
TARGET_MS = 50.0
NOTE = ("(d) one batch of N (manifest: announce + Dispatcher + close), map results {counts: {word: n}} published at "
        "a paced rate onto the barrier's input, barrier = one `batchmesh router` process; timed from the last XADD to "
        "the aggregate ready. join = emit: event, then SMEMBERS manifest + HMGET results + fold in Python + XADD.")


@dataclass(frozen=True)
class Workload:
    n: int
    words: int = 10
    vocabulary: int = 5000
    rate: float = 5_000.0
    seed: int = 1

    def results(self) -> tuple[list[bytes], Counter[str]]:
        """The N map results (encoded JSON) and their word total, the aggregate every side must produce."""
        rng = random.Random(self.seed)
        vocab = [f"w{i}" for i in range(self.vocabulary)]
        cum = list(itertools.accumulate(1 / (r + 1) for r in range(self.vocabulary)))
        words = min(self.words, self.vocabulary)
        total: Counter[str] = Counter()
        out = []
        for _ in range(self.n):
            chosen: dict[str, int] = {}
            while len(chosen) < words:
                w = vocab[bisect.bisect(cum, rng.random() * cum[-1])]
                chosen.setdefault(w, rng.randint(1, 20))
            total.update(chosen)
            out.append(encode_json({"counts": chosen}))
        return out, total


def _spec(name: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": name, "source": {"path": "."},
            "stages": {"map": {"work": {"input": "source", "worker": "noop"}}, "gate": GATES[kind],
                       "next": {"work": {"input": "gate", "worker": "noop"}}}}  # someone reads the barrier's stream


def _item(i: int, result: bytes, batch: str) -> bytes:
    return b'{"id":"doc-%d","data":%s,"batch":"%s"}' % (i, result, batch.encode())


def _start_barrier(url: str, spec: Path, tmp: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, REDIS_URL=url, BATCHMESH_LOG_LEVEL="WARNING", BATCHMESH_DATA_DIR=str(tmp / "data"),
               BATCHMESH_OUT_DIR=str(tmp / "out"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with (tmp / "barrier.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "router", "--pipeline", str(spec), "--stage",
                                 "gate"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def _xread(client: redis.Redis, stream: str, after: bytes | str, proc: subprocess.Popen[bytes], count: int = 1,
           timeout: float = 300) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Block until entries after `after` are on `stream` (checking, every second, that the barrier lives)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = client.xread({stream: after}, count=count, block=1000)
        if reply:
            return reply[0][1]
        if proc.poll() is not None:
            raise RuntimeError(f"the barrier process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing on {stream} after {timeout:.0f} s")


def _publish(client: redis.Redis, keys: Keys, items: list[bytes], results: list[bytes] | None,
             rate: float) -> tuple[float, float, list[tuple[float, int]]]:
    """The map: XADD the items (and, for a join, record the results) chunk by chunk at `rate` (0 = unpaced).
    Returns (first chunk sent, last XADD returned, [(when, items the barrier had folded)] per chunk)."""
    stream, stats, store = keys.stream("map"), keys.stage_stats("gate"), keys.results()
    folded0 = int(client.hget(stats, "out") or 0)
    samples: list[tuple[float, int]] = []
    began = time.perf_counter()
    for first in range(0, len(items), CHUNK):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + CHUNK, len(items))):
            if results is not None:
                pipe.hset(store, f"doc-{i}", results[i])
            pipe.xadd(stream, {b"item": items[i]})
        pipe.hget(stats, "out")
        folded = pipe.execute()[-1]
        now = time.perf_counter()
        samples.append((now, int(folded or 0) - folded0))
        ahead = began + (first + CHUNK) / rate - now if rate else 0
        if ahead > 0:
            time.sleep(ahead)
    return began, samples[-1][0], samples


def _aggregate_after_join(client: redis.Redis, keys: Keys, batch: str) -> dict[str, Any]:
    """The baseline's aggregator: the batch's ids from its manifest, their results, folded here."""
    ids = sorted(m.decode() for m in client.smembers(keys.batch_items(batch)))
    words: Counter[str] = Counter()
    files = 0
    for start in range(0, len(ids), 10_000):
        for raw in client.hmget(keys.results(), ids[start:start + 10_000]):
            if raw is not None:
                words.update(json.loads(raw)["counts"])
                files += 1
    return {"words": dict(sorted(words.items())), "files": files}


def _aggregate_released(client: redis.Redis, stream: str, after: bytes, n: int,
                        proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    words: Counter[str] = Counter()
    seen = 0
    while seen < n:  # the join's released items, folded here as they are read
        for entry_id, fields in _xread(client, stream, after, proc, count=10_000):
            words.update(WorkItem.model_validate_json(fields[b"item"]).data["counts"])
            after, seen = entry_id, seen + 1
    return {"words": dict(sorted(words.items())), "files": seen}


def run_once(url: str, kind: str, load: Workload, results: list[bytes], expected: Counter[str]) -> dict[str, Any]:
    """One batch of load.n through one barrier of `kind`; the figures of that run."""
    gate = "reduce" if kind == "reduce-unpaced" else kind
    rate = 0.0 if kind == "reduce-unpaced" else load.rate
    client = redis.Redis.from_url(url)
    name = pipeline_name(f"bbar-{gate}")
    keys = Keys(name)
    out = keys.stream("gate")
    with tempfile.TemporaryDirectory(prefix="bench-barriers-") as tmpdir:
        tmp = Path(tmpdir)
        spec = tmp / "pipeline.yaml"
        spec.write_text(yaml.safe_dump(_spec(name, gate)))
        warm = batches.new_batch_id() + "-warm"  # a one-item batch: the barrier is up, its scripts loaded
        batches.announce(client, keys, warm)
        Dispatcher(client, keys, Progress(client, keys), batch=warm).dispatch([{"name": "warm-up"}])
        batches.close(client, keys, warm, 1)
        proc = _start_barrier(url, spec, tmp)
        try:
            client.xadd(keys.stream("map"), {b"item": encode_json({"id": "warm-up", "batch": warm})})
            if gate == "join":
                client.hset(keys.results(), "warm-up", encode_json({"counts": {}}))
            after = _xread(client, out, "0-0", proc, timeout=60)[-1][0]
            batch = batches.new_batch_id()
            began = time.perf_counter()
            batches.announce(client, keys, batch)
            dispatcher = Dispatcher(client, keys, Progress(client, keys), batch=batch)
            for first in range(0, load.n, 1000):
                dispatcher.dispatch([{"name": f"doc-{i}"} for i in range(first, min(first + 1000, load.n))])
            listed = batches.close(client, keys, batch, load.n)
            manifest_s = time.perf_counter() - began
            assert listed == load.n, listed
            items = [_item(i, r, batch) for i, r in enumerate(results)]
            first_sent, last, samples = _publish(client, keys, items, results if gate == "join" else None, rate)
            if gate == "reduce":
                entry = _xread(client, out, after, proc)[0]
                ready = time.perf_counter()
                data = WorkItem.model_validate_json(entry[1][b"item"]).data
                agg, done = data["aggregate"], data["done"]
            elif gate == "join":
                entry = _xread(client, out, after, proc)[0]
                agg = _aggregate_after_join(client, keys, batch)
                client.xadd(keys.stream("aggregate"), {b"item": encode_json({"id": f"{batch}/aggregate",
                                                                             "batch": batch, "data": agg})})
                ready = time.perf_counter()
                done = WorkItem.model_validate_json(entry[1][b"item"]).data["done"]
            else:
                agg = _aggregate_released(client, out, after, load.n, proc)
                client.xadd(keys.stream("aggregate"), {b"item": encode_json({"id": f"{batch}/aggregate",
                                                                             "batch": batch, "data": agg})})
                ready = time.perf_counter()
                done = agg["files"]
        except BaseException:
            sys.stderr.write((tmp / "barrier.log").read_text(errors="replace")[-3000:])
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            drop_pipeline(client, name)
            client.close()
    assert done == load.n and agg["files"] == load.n and agg["words"] == dict(expected), (kind, done, agg["files"])
    map_s = last - first_sent
    folded = samples[-1][1]
    half = next((s for s in samples if s[0] - first_sent >= map_s / 2), samples[0])  # steady state: 2nd half
    return {"latency_ms": (ready - last) * 1000, "manifest_s": manifest_s, "map_s": map_s,
            "map_rate": load.n / map_s, "fold_rate": (folded - half[1]) / max(last - half[0], 1e-9),
            "backlog_at_last": load.n - folded, "end_to_end_rate": load.n / (ready - first_sent)}


def measure(url: str, load: Workload, repeat: int, kinds: tuple[str, ...] = KINDS,
            say: Any = None) -> dict[str, list[dict[str, Any]]]:
    results, expected = load.results()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for rep in range(repeat):
        for kind in kinds:  # interleaved: drift hits every kind alike
            r = run_once(url, kind, load, results, expected)
            runs[kind].append(r)
            if say is not None:
                say(f"(d) run {rep + 1}/{repeat} {kind:14} last map result -> aggregate {r['latency_ms']:9.1f} ms  "
                    f"(map {r['map_rate']:,.0f}/s; folded {r['fold_rate']:,.0f}/s in its 2nd half, backlog at the "
                    f"last {r['backlog_at_last']:,}; manifest {r['manifest_s']:.2f} s)")
    return runs


def rows_of(load: Workload, runs: dict[str, list[dict[str, Any]]]) -> list[Row]:
    lat = {kind: [r["latency_ms"] for r in rs] for kind, rs in runs.items()}
    head = f"(d) barrier, N={load.n:,}, {load.words} words/item"
    rows = [Row(f"{head}: last map result -> reduce's aggregate, map at {load.rate:,.0f}/s", median(lat["reduce"]),
                "ms", median(lat["join"]) if "join" in lat else None, "join (event) then aggregate", "value<=",
                TARGET_MS, lat["reduce"], lat.get("join", []))]
    if "join-items" in lat:
        rows.append(Row(f"{head}: reduce vs join (emit: items) then aggregate", median(lat["reduce"]), "ms",
                        median(lat["join-items"]), "join (items) then aggregate", "info", None, lat["reduce"],
                        lat["join-items"]))
    folds = [r["fold_rate"] for r in runs["reduce"]]
    rows.append(Row(f"{head}: reduce fold rate while the map runs at {load.rate:,.0f}/s", median(folds), "items/s",
                    runs=folds))
    if "reduce-unpaced" in runs:
        cap = [r["end_to_end_rate"] for r in runs["reduce-unpaced"]]
        rows.append(Row(f"{head}: reduce capacity, unpaced map (N / first result -> aggregate)", median(cap),
                        "items/s", goal="value>=", target=CAPACITY_TARGET, runs=cap))
        tail = [r["latency_ms"] for r in runs["reduce-unpaced"]]
        rows.append(Row(f"{head}: last map result -> reduce's aggregate, unpaced map", median(tail), "ms",
                        runs=tail))
    return rows


def bench_barriers(url: str, n: int, runs: int, say: Any = None) -> tuple[list[Row], dict[str, Any]]:
    """Part (d) of `python -m bench`."""
    load = Workload(n)
    result = measure(url, load, runs, say=say or (lambda m: print(m, file=sys.stderr, flush=True)))
    return rows_of(load, result), {"workload": load.__dict__, "runs": result}


def merge_save(path: Path, rows: list[Row], config: dict[str, Any], details: dict[str, Any]) -> None:
    """Add (d) to an existing out/bench.json (replacing an earlier (d)), or write a new one."""
    try:
        doc = json.loads(path.read_text())
        old = [Row(**{k: v for k, v in r.items() if k not in ("ratio", "met")}) for r in doc["rows"]
               if not r["benchmark"].startswith("(d)")]
        config, details = {**doc.get("config", {}), "d": config}, {**doc.get("details", {}), "d": details}
    except (OSError, ValueError, KeyError, TypeError):
        old, config, details = [], {"d": config}, {"d": details}
    save(path, old + rows, config, details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.barriers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="items in the batch (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--rate", type=float, default=5_000,
                        help="map results/s, 0 = unpaced (default 5,000: about half the reducer's capacity here)")
    parser.add_argument("--words", type=int, default=10, help="distinct words per map result (default 10)")
    parser.add_argument("--vocabulary", type=int, default=5000, help="words in the vocabulary (default 5,000)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {','.join(KINDS)} (reduce is needed)")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench.json"), help="'' = do not save")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if "reduce" not in kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds: a subset of {','.join(KINDS)} with reduce, not {args.kinds!r}")
    from .baselines.redis_server import local_redis

    load = Workload(args.n, args.words, args.vocabulary, args.rate)
    with local_redis() as url:
        runs = measure(url, load, args.repeat, kinds, say=lambda m: print(m, file=sys.stderr, flush=True))
    rows = rows_of(load, runs)
    print(table(rows))
    lat = {kind: [round(r["latency_ms"], 1) for r in rs] for kind, rs in runs.items()}
    ours = median(lat["reduce"])
    for kind, samples in lat.items():
        print(f"  {kind:14} median {median(samples):9.1f} ms  samples {samples}")
    for kind in ("join", "join-items"):
        if kind in lat:
            print(f"  {kind} / reduce: {median(lat[kind]) / ours:,.1f}x")
    print(f"  target reduce <= {TARGET_MS:g} ms: {'met' if ours <= TARGET_MS else 'MISSED'}")
    if args.out:
        command = " ".join(["python -m bench.barriers", *(sys.argv[1:] if argv is None else argv)])
        merge_save(Path(args.out), rows, {"command": command, **load.__dict__, "repeat": args.repeat, "kinds": kinds},
                   {"workload": load.__dict__, "runs": runs})
        print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
