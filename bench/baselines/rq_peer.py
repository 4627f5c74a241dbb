"""RQ peer: enqueue n no-op jobs, drain them with an in-process SimpleWorker (no fork per job).

Choices (fair to RQ, otherwise stock behaviour):
- enqueue: ``Queue.prepare_data`` + ``Queue.enqueue_many`` in pipelined batches of ``BATCH`` jobs,
  the fastest bulk enqueue RQ offers;
- ``result_ttl=RESULT_TTL`` (finite and nonzero, so results/registry entries are written and expire as
  by default; the cost per job is the same for any positive TTL). It must outlive the run: with 60 s,
  a 20000-job run (~65 s here) saw the earliest FinishedJobRegistry entries expire before the count;
- rq loggers at WARNING (``work(logging_level="WARNING")``): per-job INFO lines would dominate;
- ``log_job_description=False`` for the same reason; everything else (timeouts, result storage,
  registries, heartbeats) is RQ's default.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from bench.baselines.noop import noop

BATCH = 1000
RESULT_TTL = 3600  # seconds; outlives any run so FinishedJobRegistry still holds all n jobs


def _quiet_rq() -> None:
    for name in ("rq", "rq.worker", "rq.job", "rq.queue", "rq.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)


def measure_rq(redis_url: str, n: int) -> dict[str, Any]:
    """Time enqueue + burst drain of ``n`` no-op jobs; return items_per_s, seconds, n."""
    _quiet_rq()
    conn = redis.Redis.from_url(redis_url)
    queue = Queue(f"bench-rq-{uuid.uuid4().hex[:8]}", connection=conn)
    worker = SimpleWorker([queue], connection=conn, log_job_description=False)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            datas = [
                Queue.prepare_data(noop, args=(i,), result_ttl=RESULT_TTL) for i in range(start, min(start + BATCH, n))
            ]
            with conn.pipeline() as pipe:
                queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()
        worker.work(burst=True, logging_level="WARNING")
        seconds = time.perf_counter() - t0
        finished = FinishedJobRegistry(queue=queue).count
        assert finished == n, f"rq finished {finished} of {n} jobs"
        failed = FailedJobRegistry(queue=queue).count
        assert failed == 0, f"rq failed {failed} jobs"
        assert queue.count == 0, f"rq left {queue.count} jobs queued"
        return {"items_per_s": n / seconds, "seconds": seconds, "n": finished}
    finally:
        queue.delete(delete_jobs=True)
        conn.close()
