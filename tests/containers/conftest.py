"""Tests that need a real Docker engine: the project's images, `docker compose up`, the docker executor.

With CI=true a missing engine fails these tests (CI starts one with ../shared/containers/docker-up.sh); elsewhere
they skip with the reason. The images are built once per session from the repository's own Dockerfiles, exactly
as `docker compose build` or a user would build them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.render.roles import MESH_IMAGE, worker_image

ROOT = Path(__file__).resolve().parents[2]
VIDEO_WORKER = worker_image(["video"])  # what compose/thumbnailer.yml builds: ffmpeg, no OpenCV
IMAGES = {  # tag -> (Dockerfile, build args), built from the repository root like Compose builds them
    MESH_IMAGE: ("services/Dockerfile", {}),
    VIDEO_WORKER: ("services/workers/Dockerfile", {"EXTRAS": "video"}),
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
    dockerfile, args = IMAGES[tag]
    client.images.build(path=str(ROOT), dockerfile=dockerfile, buildargs=args, tag=tag,  # type: ignore[attr-defined]
                        rm=True)
    return tag


@pytest.fixture(scope="session")
def mesh_image(docker_client: object) -> str:
    return build(docker_client, MESH_IMAGE)


@pytest.fixture(scope="session")
def worker_image(docker_client: object) -> str:
    return build(docker_client, VIDEO_WORKER)
