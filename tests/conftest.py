"""Shared fixtures: one real Redis per test session (REDIS_URL if set, else the embedded redis-server), and a
fresh pipeline name per test so tests are isolated by key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.core import EmbeddedRedis, Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def pipeline_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(redis_url: str, pipeline_name: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, pipeline=pipeline_name, data_dir=tmp_path / "data", block_ms=100,
                    visibility_timeout_ms=300, max_deliveries=3)
