"""The peer-baseline harness works end to end (not a timed test): RQ and Celery each run n no-op jobs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

pytest.importorskip("rq")
pytest.importorskip("celery")

from bench.baselines.celery_peer import measure_celery  # noqa: E402
from bench.baselines.redis_server import local_redis  # noqa: E402
from bench.baselines.rq_peer import measure_rq  # noqa: E402

N = 200


@pytest.fixture(scope="module")
def bench_redis() -> Iterator[str]:
    with local_redis() as url:
        yield url


def test_local_redis_is_loopback_and_stops() -> None:
    import redis

    with local_redis() as url:
        assert url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(url).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_rq_peer_runs_all_jobs(bench_redis: str) -> None:
    out = measure_rq(bench_redis, N)
    assert out["n"] == N
    assert out["items_per_s"] > 0 and out["seconds"] > 0


def test_celery_peer_runs_all_tasks(bench_redis: str) -> None:
    out = measure_celery(bench_redis, N)
    assert out["n"] == N
    assert out["items_per_s"] > 0 and out["seconds"] > 0
