"""Tests that need a real Docker engine: the project's images, `docker compose up`, the docker executor.

With CI=true a missing engine fails these tests (CI starts one with ../shared/containers/docker-up.sh); elsewhere
they skip with the reason. The images are built once per session from the repository's own Dockerfiles, exactly
as `docker compose build` or a user would build them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {  # tag -> Dockerfile, both built from the repository root
    "batchmesh:0.1.0": "services/Dockerfile",
    "batchmesh-worker:0.1.0": "services/workers/Dockerfile",
}


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down: all mean "no engine here"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no Docker engine: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    client.close()


def build(client: object, tag: str) -> str:
    """Build `tag` from its Dockerfile (the engine's layer cache makes a rebuild of an unchanged tree ~1 s)."""
    client.images.build(path=str(ROOT), dockerfile=IMAGES[tag], tag=tag, rm=True)  # type: ignore[attr-defined]
    return tag


@pytest.fixture(scope="session")
def mesh_image(docker_client: object) -> str:
    return build(docker_client, "batchmesh:0.1.0")


@pytest.fixture(scope="session")
def worker_image(docker_client: object) -> str:
    return build(docker_client, "batchmesh-worker:0.1.0")
