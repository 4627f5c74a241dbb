"""`python -m bench` (`make bench`): batchmesh against its peers and raw baselines, in ONE run on ONE Redis.

    python -m bench [--quick] [--only a,b,c] [--n N] [--runs R] [--out out/bench.json]

(a) no-op work queue, items/s: the `stream` executor (manager Dispatcher -> one `batchmesh worker` process)
    vs RQ SimpleWorker vs Celery on a Redis broker vs the client's raw pipelined XADD loop; the same n items
    each, repetitions interleaved (ours, rq, celery, raw, ours, ...) so drift hits all alike.
    Targets (issue 12): >= 150x RQ, >= 50x Celery, >= 0.5x raw XADD.
(b) `process` executor, wall time per item of /bin/true at concurrency 1, vs `subprocess.run` of it
    (and `os.posix_spawn` + waitpid, for information), interleaved. Target: <= 1.5x.
(c) manager diff of a 1,000,000-item listing in a subprocess of its own (one per repetition): steady state
    (every item known, <= 5 s), first pass (every item new, dispatched, <= 10 s), peak RSS (<= 300 MB).
(d) barriers at N=100,000: last map result -> final aggregate, reduce vs join-then-aggregate (<= 50 ms), and
    one reducer's fold capacity with an unpaced map (>= 30,000 items/s); see bench/barriers.py.
(e) the image pipeline on 2 cores vs a sequential script of the same functions (>= 1.7x); see bench/images.py.
(r) server-side routers vs the raw pipelined XADD loop (>= 1.2x each) and the hop latency p99 through a
    splitter at a paced 10k msg/s (<= 2 ms, <= 1.3x the raw hop); see bench/routers.py.
Figures are medians over the repetitions; the table goes to stdout, progress to stderr, everything to --out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import redis

from .barriers import NOTE as BARRIERS_NOTE
from .barriers import bench_barriers
from .baselines.celery_peer import measure_celery
from .baselines.redis_server import local_redis
from .baselines.rq_peer import measure_rq
from .common import median
from .diff_million import measure_diff
from .images import bench_images
from .process_overhead import measure_posix_spawn, measure_process_executor, measure_subprocess_run
from .report import Row, save, table
from .routers import bench_routers, raw_xadd
from .workqueue import measure_stream

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("a", "b", "c", "d", "e", "r")
FULL = {"n": 20_000, "n_process": 300, "n_diff": 1_000_000, "n_images": 100, "n_router": 50_000, "runs": 3}
NOTES = {
    "a": "(a) each side: one producer in this process, one consumer process, the same n. ours: Dispatcher pages of "
         "1000 -> `batchmesh worker` (noop, defaults); RQ: enqueue_many, then SimpleWorker burst; Celery: solo "
         "worker, prefetch 256, no result backend.",
    "b": "(b) ours: items dispatched first, timed from executor start to all done (item file, output dir, pipes, "
         "own session, batched commits); ratio = median(ours) / median(baseline).",
    "c": "(c) time inside Dispatcher.dispatch only (making the listing dicts is the lister's, timed apart); "
         "both passes judged; RSS = the diff subprocess's own peak (VmHWM).",
    "e": "(e) see bench/images.py: both sides warm, pinned to 2 CPUs, OpenCV single-threaded.",
    "r": "(r) see bench/routers.py: input pre-filled, router stepped until drained; raw XADD re-measured beside "
         "each router; latency: a paced producer process, a router process, receive - send time.",
}
QUICK = {"n": 200, "n_process": 20, "n_diff": 3_000, "n_images": 4, "n_router": 2_000, "runs": 1}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_workqueue(url: str, n: int, runs: int, workers: int = 1) -> tuple[list[Row], dict[str, Any]]:
    ours: list[float] = []
    rq: list[float] = []
    celery: list[float] = []
    raw: list[float] = []
    details: dict[str, list[dict[str, Any]]] = {"stream": [], "rq": [], "celery": [], "raw": []}
    with redis.Redis.from_url(url) as client:
        def raw_loop() -> dict[str, float]:
            started = time.perf_counter()
            rate = raw_xadd(client, n)
            return {"items_per_s": rate, "seconds": time.perf_counter() - started}
        for rep in range(runs):
            for label, fn, rates in (("stream", lambda: measure_stream(url, n, workers), ours),
                                     ("rq", lambda: measure_rq(url, n), rq),
                                     ("celery", lambda: measure_celery(url, n), celery),
                                     ("raw", raw_loop, raw)):
                result = fn()
                rates.append(result["items_per_s"])
                details[label].append(result)
                say(f"(a) run {rep + 1}/{runs} {label:7} {result['items_per_s']:>10,.0f} items/s  "
                    f"({result['seconds']:.2f} s for {n})")
    name = f"(a) no-op work queue, n={n:,}, stream executor"
    rows = [
        Row(f"{name} vs RQ", median(ours), "items/s", median(rq), "RQ SimpleWorker", "ratio>=", 150, ours, rq),
        Row(f"{name} vs Celery", median(ours), "items/s", median(celery), "Celery, Redis broker", "ratio>=", 50,
            ours, celery),
        Row(f"{name} vs raw XADD", median(ours), "items/s", median(raw), "pipelined XADD loop", "ratio>=", 0.5,
            ours, raw),
    ]
    return rows, details


def bench_process(url: str, n: int, runs: int) -> tuple[list[Row], dict[str, Any]]:
    ours: list[float] = []
    run: list[float] = []
    spawn: list[float] = []
    for rep in range(runs):
        for label, fn, times in (("process executor", lambda: measure_process_executor(url, n), ours),
                                 ("subprocess.run", lambda: measure_subprocess_run(n), run),
                                 ("posix_spawn", lambda: measure_posix_spawn(n), spawn)):
            ms = fn()["per_item_s"] * 1000
            times.append(ms)
            say(f"(b) run {rep + 1}/{runs} {label:16} {ms:.3f} ms/item  (n={n})")
    name = f"(b) process executor, /bin/true x{n}, concurrency 1, per item"
    rows = [
        Row(f"{name} vs subprocess.run", median(ours), "ms", median(run), "subprocess.run", "ratio<=", 1.5, ours,
            run),
        Row(f"{name} vs posix_spawn", median(ours), "ms", median(spawn), "posix_spawn+waitpid", "info", None, ours,
            spawn),
    ]
    return rows, {"executor_ms": ours, "subprocess_run_ms": run, "posix_spawn_ms": spawn}


def bench_diff(url: str, n: int, runs: int) -> tuple[list[Row], dict[str, Any]]:
    """(c): `runs` fresh diff subprocesses, each one first pass over `n` new items and one steady pass; the rows are
    the medians (peak RSS: the largest)."""
    say(f"(c) diff of {n:,} listed items in a subprocess, {runs} time(s) ...")
    outs = []
    for _ in range(runs):
        outs.append(measure_diff(url, n, passes=1))
        say(f"(c) first pass {outs[-1]['first_pass_s']:.2f} s (CPU: Python {outs[-1]['first_pass_python_cpu_s']:.2f}"
            f" s, Redis {outs[-1]['first_pass_redis_cpu_s']:.2f} s), steady pass {outs[-1]['steady_pass_s']:.2f} s, "
            f"peak RSS {outs[-1]['peak_rss_mb']:.0f} MB")
    first = [out["first_pass_s"] for out in outs]
    steady = [out["steady_pass_s"] for out in outs]
    rows = [
        Row(f"(c) diff {n:,} listed, steady state (all known)", median(steady), "s", goal="value<=", target=5.0,
            runs=steady),
        Row(f"(c) diff {n:,} listed, first pass (all new, dispatched)", median(first), "s", goal="value<=",
            target=10.0, runs=first),
        Row(f"(c) diff {n:,} listed, peak RSS of the diff process", max(out["peak_rss_mb"] for out in outs), "MB",
            goal="value<=", target=300.0),
    ]
    return rows, {"runs": outs}


def images_part(n: int, runs: int) -> tuple[list[Row], dict[str, Any]]:
    row, details = bench_images(n, runs, say)
    return [row], details


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (smoke test)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--n", type=int, help=f"(a) items per run (default {FULL['n']:,})")
    parser.add_argument("--n-process", type=int, help=f"(b) items per run (default {FULL['n_process']})")
    parser.add_argument("--n-diff", type=int, help=f"(c) listed items (default {FULL['n_diff']:,})")
    parser.add_argument("--n-images", type=int, help=f"(e) images per run (default {FULL['n_images']})")
    parser.add_argument("--n-router", type=int, help=f"(r) messages per router (default {FULL['n_router']:,})")
    parser.add_argument("--runs", type=int, help=f"repetitions of (a), (b) and (c) (a fresh diff subprocess each) "
                                                 f"(default {FULL['runs']})")
    parser.add_argument("--workers", type=int, default=1, help="(a) stream worker processes (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench.json")
    args = parser.parse_args(argv)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not only or only - set(PARTS):
        parser.error(f"--only takes a comma-separated subset of {','.join(PARTS)}, not {args.only!r}")
    args.only = only
    sizes = QUICK if args.quick else FULL
    for key, default in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    began = time.perf_counter()
    with local_redis() as url:
        with redis.Redis.from_url(url) as client:
            info = client.info("server")
        command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
        config = {"command": command, "n": args.n, "n_process": args.n_process, "n_diff": args.n_diff,
                  "n_images": args.n_images, "n_router": args.n_router,
                  "runs": args.runs, "workers": args.workers, "only": sorted(args.only),
                  "redis_version": info["redis_version"]}
        say(f"bench: redis {info['redis_version']} at {url}; sizes a={args.n:,} b={args.n_process} "
            f"c={args.n_diff:,}; {args.runs} run(s)")
        for part, fn in (("a", lambda: bench_workqueue(url, args.n, args.runs, args.workers)),
                         ("b", lambda: bench_process(url, args.n_process, args.runs)),
                         ("c", lambda: bench_diff(url, args.n_diff, args.runs)),
                         ("d", lambda: bench_barriers(url, 2_000 if args.quick else 100_000, args.runs)),
                         ("e", lambda: images_part(args.n_images, args.runs)),
                         ("r", lambda: bench_routers(url, args.n_router, args.runs, say,
                                                      seconds=2.0 if args.quick else 5.0))):
            if part in args.only:
                part_rows, details[part] = fn()
                rows += part_rows
    config["seconds"] = round(time.perf_counter() - began, 1)
    save(args.out, rows, config, details)
    print(table(rows))
    print(f"\nmedians of {args.runs} interleaved run(s), one redis-server {info['redis_version']}; saved to {args.out}")
    for part in sorted(args.only):
        print({**NOTES, "d": BARRIERS_NOTE}[part])
    return 0


if __name__ == "__main__":
    sys.exit(main())
