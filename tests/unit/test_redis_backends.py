"""The backend matrix is real: the two Redis backends the integration tests run against (the same `redis_url`
fixture, parametrized the same way) are two different major versions of the server."""

from __future__ import annotations

import os

import pytest
import redis

EXPECTED_MAJOR = {"embedded": 6, "redis7": 7}


@pytest.mark.parametrize("redis_url", list(EXPECTED_MAJOR), indirect=True, scope="session")
def test_each_backend_runs_the_redis_major_version_it_is_named_after(
        request: pytest.FixtureRequest, redis_url: str) -> None:
    backend = request.node.callspec.params["redis_url"]
    if backend == "embedded" and os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL replaces the embedded server")
    version = str(redis.Redis.from_url(redis_url).info("server")["redis_version"])
    assert int(version.split(".")[0]) == EXPECTED_MAJOR[backend], f"{backend} runs Redis {version}"
