"""Celery peer: a worker subprocess on a Redis broker, no result backend.

Fastest configuration found on the 2-core bench machine (see DEFAULTS, and the sweep in
``python -m bench.baselines --celery-sweep``): pool=solo with worker_prefetch_multiplier=256 and
``--without-gossip --without-mingle --without-heartbeat``, log level WARNING, tasks sent with
``apply_async`` on one reused producer inside kombu's ``Producer.batch()`` (pipelined LPUSHes).
Sweep (n=10000, median of 3, other load on the box so +-20%): solo/prefetch 256 ~790/s, solo/4 ~710,
threads -c2/256 ~750, prefork -c2/256 ~725, prefork -c2/4 ~600; pipelined vs per-call send made no
consistent difference (the worker, not the sender, is the bottleneck).
The rest (acks on receipt, json, the Redis transport's unacked bookkeeping) is Celery's default.
Completion: each task INCRs a counter key; the parent polls it until it equals n.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS: dict[str, Any] = {"pool": "solo", "concurrency": 1, "prefetch": 256, "batch_send": True}
SEND_BATCH = 1000  # kombu publish-batch size (Redis commands per pipeline flush)


def _wait_count(conn: redis.Redis, key: str, n: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while int(conn.get(key) or 0) < n:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery counted {int(conn.get(key) or 0)} of {n} tasks")
        time.sleep(0.002)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)  # warm shutdown; the main process reaps its pool children
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # own session: pgid == the worker's PID
            proc.wait(timeout=5)


def measure_celery(
    redis_url: str,
    n: int,
    pool: str = DEFAULTS["pool"],
    concurrency: int = DEFAULTS["concurrency"],
    prefetch: int = DEFAULTS["prefetch"],
    batch_send: bool = DEFAULTS["batch_send"],
) -> dict[str, Any]:
    """Time sending ``n`` no-op tasks until the worker has run all of them."""
    from bench.baselines.celery_app import app, noop_count

    tag = uuid.uuid4().hex[:8]
    queue, key = f"bench-celery-{tag}", f"bench-celery-count-{tag}"
    env = dict(
        os.environ,
        BENCH_REDIS_URL=redis_url,
        BENCH_CELERY_PREFETCH=str(prefetch),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.baselines.celery_app",
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "-Q",
        queue,
        "-n",
        f"bench-{tag}@%h",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    conn = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        try:
            with app.connection_for_write(url=redis_url) as bconn, app.amqp.Producer(bconn) as producer:
                noop_count.apply_async((key + "-warm",), producer=producer, queue=queue)
                _wait_count(conn, key + "-warm", 1, 60.0, proc)  # worker is up and consuming
                batch = producer.batch(SEND_BATCH) if batch_send else contextlib.nullcontext()
                t0 = time.perf_counter()
                with batch:
                    for i in range(n):
                        noop_count.apply_async((key, i), producer=producer, queue=queue)
                _wait_count(conn, key, n, 60.0 + n / 20, proc)
                seconds = time.perf_counter() - t0
            done = int(conn.get(key) or 0)
            assert done == n, f"celery ran {done} of {n} tasks"
            return {
                "items_per_s": n / seconds,
                "seconds": seconds,
                "n": done,
                "pool": pool,
                "concurrency": concurrency,
                "prefetch": prefetch,
                "batch_send": batch_send,
            }
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            _stop(proc)
            conn.delete(key, key + "-warm", queue)
            conn.close()
