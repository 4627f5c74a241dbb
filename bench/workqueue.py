"""(a) No-op work queue, items/s: the `stream` executor against RQ's SimpleWorker and Celery on one Redis.

Ours, set up like the peers (one producer in this process, ONE consumer process, the same n items):
- a `batchmesh worker` subprocess (the CLI entry point the worker containers run: `run_worker`, builtin `noop`,
  default settings) is started before the clock and warmed up with one item, as the Celery peer warms its worker;
- the clock starts when this process starts enqueueing, through the manager's real enqueue path: the
  `Dispatcher` (HMGET diff + dispatch script), page by page, 1000 listed items a page;
- it stops when the pipeline's progress counts all n items done (a sink: results recorded, state `done`).
Producer and consumer overlap on the two cores, as the Celery peer's do (RQ's burst worker drains after the
enqueue by its design). The listed items are the smallest valid ones (a name), like the peers' `noop(i)`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from services.core import Keys, Progress
from services.manager.diff import Dispatcher

from .common import drop_pipeline, minimal_item, pages, pipeline_name, wait_done

ROOT = Path(__file__).resolve().parents[1]
STAGE = "work"
MIN_ITEM_S = 0.00001  # a lower bound of our time per item: the end is polled for less often while far away
SPEC = """apiVersion: batchmesh/v1
kind: Pipeline
name: {name}
source: {{type: directory, path: {source}}}
stages:
  {stage}: {{work: {{input: source, worker: noop, executor: stream}}}}
"""


def _start_workers(url: str, spec: Path, tmp: Path, count: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, REDIS_URL=url, BATCHMESH_OUT_DIR=str(tmp / "out"), BATCHMESH_DATA_DIR=str(tmp / "data"),
               BATCHMESH_LOG_JSON="true",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "services.cli", "worker", "--pipeline", str(spec), "--stage", STAGE]
    procs = []
    for i in range(count):
        with (tmp / f"worker-{i}.log").open("wb") as log:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=log))
    return procs


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the worker finishes its batch, commits and leaves the group
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_stream(url: str, n: int, workers: int = 1) -> dict[str, Any]:
    """Time dispatching `n` listed items until `workers` stream-worker processes have done them all."""
    name = pipeline_name("bwq")
    client = redis.Redis.from_url(url)
    keys = Keys(name)
    dispatcher = Dispatcher(client, keys, Progress(client, keys), batch="b")
    with tempfile.TemporaryDirectory(prefix="bench-wq-") as tmpdir:
        tmp = Path(tmpdir)
        spec = tmp / "pipeline.yaml"
        spec.write_text(SPEC.format(name=name, source=tmp, stage=STAGE))
        client.xgroup_create(keys.stream("source"), STAGE, id="0", mkstream=True)  # as Manager.ensure_groups
        procs = _start_workers(url, spec, tmp, workers)
        try:
            alive = lambda: all(p.poll() is None for p in procs)  # noqa: E731
            dispatcher.dispatch([{"name": "warm-up"}])
            wait_done(client, name, 1, timeout=60, alive=alive)  # the workers are up and consuming
            cpu0, redis0 = sum(_cpu_s(p.pid) for p in procs), _redis_cpu_s(client)  # diagnostics only
            started = time.perf_counter()
            for page in pages(n, minimal_item):
                dispatcher.dispatch(page)
            enqueued = time.perf_counter() - started
            wait_done(client, name, n + 1, timeout=60 + n / 500, item_s=MIN_ITEM_S, alive=alive)
            seconds = time.perf_counter() - started
            worker_cpu, redis_cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0, _redis_cpu_s(client) - redis0
            counts = Progress(client, keys).counts()
        except BaseException:
            for log in sorted(tmp.glob("worker-*.log")):
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise
        finally:
            _stop_workers(procs)
            drop_pipeline(client, name)
            client.close()
    assert counts["done"] == n + 1 and not counts["dead"] and not counts["failed"], counts
    # CPU per item (µs) of the worker process(es) and of redis-server (which also ran the enqueue's scripts):
    # load-robust figures beside the wall-clock rate.
    return {"items_per_s": n / seconds, "seconds": seconds, "enqueue_seconds": enqueued, "n": n, "workers": workers,
            "worker_cpu_us_per_item": worker_cpu / n * 1e6, "redis_cpu_us_per_item": redis_cpu / n * 1e6}
