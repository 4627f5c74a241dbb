"""Celery app for the peer baseline: broker = $BENCH_REDIS_URL, no result backend.

Worker: ``celery -A bench.baselines.celery_app worker ...`` (see celery_peer.py for the flags).
Completion is detected without a result backend: each task INCRs ``counter_key`` and the
parent polls that key until it reaches n.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from bench.baselines.noop import noop

BROKER_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFETCH = int(os.environ.get("BENCH_CELERY_PREFETCH", "4"))

app = Celery("bench_baselines", broker=BROKER_URL)
app.conf.update(
    result_backend=None,
    task_ignore_result=True,
    worker_prefetch_multiplier=PREFETCH,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
)

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client per process (prefork children must not share the parent's socket)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(BROKER_URL))
    return _client[1]


@app.task(name="bench.noop_count", ignore_result=True)
def noop_count(counter_key: str, x: Any = None) -> Any:
    out = noop(x)
    _redis().incr(counter_key)
    return out
