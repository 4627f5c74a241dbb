"""Chaos harness (Jepsen-style): a whole pipeline under `batchmesh run` on the embedded Redis while a driver
SIGKILLs random role processes at random moments and the run's supervisor restarts them; then a checker judges
the outcome from Redis and the outputs against ground truth computed on its own.

    python -m bench.chaos --items 200000 --kills 20 [--seed 1] [--json out/chaos.json] [--keep DIR]
    python -m bench.chaos_compose --items 20000 --kills 20     # the same in containers, redis:7, `docker kill`

The pipeline is examples/chaos/chaos.yaml: source -> shards (shard x2) -> work-0 | work-1 (2 replicas each, an
in-process SHA-256 worker) -> merged (merge) -> fanout (copy) -> totals (reduce) and done (join). The driver
(bench/chaos_driver.py) picks the moments and victims; the checker (bench/chaos_check.py) says what it verifies.
Figures: items, kills per role class and role, reclaims (scraped from the roles' /metrics: a lower bound),
duplicates, lost, dead letters, whether the reduce is exact and the join fired once after every item, wall
time. Printed, and written as JSON (--json) for the README's Reliability table. Exit 0 when every check holds."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from services.core.embedded import redis_url
from services.core.spec import Pipeline, load_pipeline

from .chaos_check import REDUCER, check, create_audit_groups
from .chaos_driver import Driver, Scraper, local_roles, progress, sigkill

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "chaos" / "chaos.yaml"


def generate(path: Path, items: int, seed: int) -> Path:
    """The input file, written by the example's own generator."""
    spec = importlib.util.spec_from_file_location("chaos_generate", ROOT / "examples" / "chaos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write(path, items, seed)


def _role_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BATCHMESH_REDIS_URL")}
    return {**env, "BATCHMESH_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}


def run_local(items: int, kills: int, *, seed: int = 1, workdir: Path, timeout: float = 1800,
              max_per_role: int = 4, item_ms: float = 0) -> dict[str, Any]:
    """One chaos run under `batchmesh run` on the embedded Redis of `workdir`/state; returns the figures.
    `item_ms` paces the worker (CHAOS_ITEM_MS), so that a short run's kills land while the map runs."""
    pipeline: Pipeline = load_pipeline(SPEC)
    data_dir, out = workdir / "state", workdir / "out"
    items_file = generate(workdir / "items.jsonl", items, seed)
    log_file = workdir / "run.log"
    # The harness holds a lease on the data directory's embedded server (core.redis_lease) for the whole run, so
    # the run shares it, and the checker reads it after the run has exited.
    with redis_url(None, data_dir / "redis") as url:
        client = redis.Redis.from_url(url)
        create_audit_groups(client, pipeline)
        began = time.monotonic()
        with log_file.open("wb") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", str(SPEC), "--input", str(items_file), "--out",
                 str(out), "--quiet", "--timeout", str(timeout)], cwd=ROOT,
                env={**_role_env(data_dir), "CHAOS_ITEM_MS": str(item_ms)},
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        stop = threading.Event()
        driver = Driver(find=lambda: local_roles(run.pid, pipeline), kill=sigkill,
                        progress=lambda: progress(client, pipeline, items, REDUCER), kills=kills, seed=seed,
                        max_per_role=max_per_role, done=lambda: run.poll() is not None)
        scraper = Scraper(data_dir / "run" / pipeline.name / "targets.json")
        threads = [threading.Thread(target=driver.run, args=(stop,), daemon=True),
                   threading.Thread(target=scraper.run, args=(stop,), daemon=True)]
        for t in threads:
            t.start()
        try:
            rc = run.wait(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, 9)
            rc = run.wait()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5)
        wall = time.monotonic() - began
        figures = check(client, pipeline, items_file, out)
        client.close()
    return {"variant": "local (batchmesh run, embedded Redis 6.2, SIGKILL)", "run_exit": rc,
            "wall_s": round(wall, 1), "items_per_s": round(items / wall, 1), "item_ms": item_ms, **driver.figures(),
            "reclaimed": scraper.reclaimed(), "reclaimed_total": sum(scraper.reclaimed().values()), **figures,
            "ok": figures["ok"] and rc == 0, "log_tail": _tail(log_file)}


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:300] for line in text if not line.startswith("{")][-lines:]


def summary(f: dict[str, Any]) -> str:
    """The figures as a few readable lines."""
    kills = ", ".join(f"{k} {v}" for k, v in f["kills_per_class"].items()) or "none"
    return "\n".join([
        f"chaos: {f['variant']}",
        f"  items {f['items']:,}, wall {f['wall_s']} s ({f['items_per_s']:,} items/s), run exit {f['run_exit']}",
        f"  kills {f['kills']} ({kills})",
        f"  reclaimed (lower bound) {f['reclaimed_total']} {f['reclaimed']}",
        f"  duplicates {f['duplicates']}, lost {f['lost']}, dead letters {f['dead_letters']}",
        f"  reduce exact: {f['reduce_exact']}, join fired once after every item: {f['join_once_after_all']} "
        f"({f['join']['events']} event(s))",
        f"  batches {[(b['items'], b['complete']) for b in f['batches']]}",
        f"  {'OK' if f['ok'] else 'FAILED'}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-per-role", type=int, default=4,
                        help="kills of one role name at most (the local supervisor gives up after 5 restarts)")
    parser.add_argument("--timeout", type=float, default=1800, help="the run's --timeout, seconds")
    parser.add_argument("--item-ms", type=float, default=0, help="the worker's sleep per item (CHAOS_ITEM_MS)")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "chaos.json")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if args.items < 1 or args.kills < 0:
        parser.error("--items must be at least 1 and --kills at least 0")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bm-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        figures = run_local(args.items, args.kills, seed=args.seed, workdir=workdir, timeout=args.timeout,
                            max_per_role=args.max_per_role, item_ms=args.item_ms)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(summary(figures))
    if not figures["ok"]:
        print("\n".join(figures["log_tail"]), file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures: {args.json}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
