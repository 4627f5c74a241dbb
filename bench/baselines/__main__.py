"""``python -m bench.baselines --n 20000``: median items/s of the RQ and Celery peers on one local Redis."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

from bench.baselines.celery_peer import measure_celery
from bench.baselines.redis_server import local_redis
from bench.baselines.rq_peer import measure_rq

SWEEP: list[dict[str, Any]] = [
    {"pool": pool, "concurrency": c, "prefetch": p, "batch_send": b}
    for pool, c in (("solo", 1), ("threads", 2), ("prefork", 2))
    for p in (4, 64, 256)
    for b in (False, True)
]


def _median(fn: Callable[[], dict[str, Any]], runs: int) -> tuple[float, list[float]]:
    rates = [fn()["items_per_s"] for _ in range(runs)]
    return statistics.median(rates), rates


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["rq", "celery"], default=None)
    ap.add_argument("--celery-sweep", action="store_true", help="try Celery pool/prefetch/send configurations")
    args = ap.parse_args(argv)
    with local_redis() as url:
        print(f"redis {url}  n={args.n}  runs={args.runs}", flush=True)
        if args.celery_sweep:
            for cfg in SWEEP:
                med, rates = _median(lambda cfg=cfg: measure_celery(url, args.n, **cfg), args.runs)
                print(f"celery {cfg}: median {med:,.0f} items/s  runs {[round(r) for r in rates]}", flush=True)
            return
        if args.only in (None, "rq"):
            med, rates = _median(lambda: measure_rq(url, args.n), args.runs)
            print(f"rq SimpleWorker: median {med:,.0f} items/s  runs {[round(r) for r in rates]}", flush=True)
        if args.only in (None, "celery"):
            med, rates = _median(lambda: measure_celery(url, args.n), args.runs)
            print(f"celery:          median {med:,.0f} items/s  runs {[round(r) for r in rates]}", flush=True)


if __name__ == "__main__":
    main()
