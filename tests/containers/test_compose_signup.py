"""The sign-up flow under `docker compose` from the committed compose/signup.yml, on a real engine: its sinks run
as the `sinks` sidecar (reachable on the compose network only), the sign-ups are generated into the input dir, the
secret comes from the environment `up` runs in. Every service but Grafana (it cannot be pulled here) starts in its
own project with its own host dirs; once the manager's status API says the batch is done, examples/signup/check.py
finds every promise kept in the sidecar's recordings, and `down -v` leaves nothing behind. Without the secret,
both Compose implementations refuse the file, naming the variable."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
from compose_project import ComposeProject, wait_for

from services.manager.report import done_in
from services.render.roles import worker_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the PromQL helpers' free_port
from promql import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "signup.yml"
EXAMPLE = ROOT / "examples" / "signup"
USERS = 40
EXTRA_LINE = 'signup = ["aiosmtpd>=1.4"]'


@pytest.fixture(scope="module")
def signup_image(docker_client: Any, mesh_image: str) -> str:
    """The worker image with the `signup` extra (the sinks' aiosmtpd), built as compose would build it."""
    tag = worker_image(["signup"])
    docker_client.images.build(path=str(ROOT), dockerfile="services/workers/Dockerfile", tag=tag, rm=True,
                               buildargs={"EXTRAS": "signup"})
    try:
        docker_client.containers.run(tag, entrypoint=["python", "-c", "import aiosmtpd"], remove=True)
    except docker.errors.ContainerError:
        pytest.fail(f"{tag} has no aiosmtpd: pyproject.toml's [project.optional-dependencies] needs {EXTRA_LINE}")
    return tag


@pytest.mark.parametrize("cli", [("docker", "compose"), ("docker-compose",)], ids=["v2+", "v1"])
def test_refused_without_the_secret(cli: tuple[str, ...]) -> None:
    if shutil.which(cli[0]) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no {cli[0]}")
        pytest.skip(f"no {cli[0]}")
    env = {k: v for k, v in os.environ.items() if k != "SIGNUP_SECRET"}
    done = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode != 0
    assert "set SIGNUP_SECRET to a long random string" in done.stderr


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=5) as reply:  # noqa: S310
        return json.loads(reply.read())


@pytest.mark.timeout(480)  # ~55 s; building both images from a cold cache takes ~200 s more
def test_signup_runs_under_compose_and_keeps_every_promise(docker_client: Any, signup_image: str,
                                                             tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    inp, out = tmp_path / "input", tmp_path / "out"
    manager_port = free_port()
    project = ComposeProject(COMPOSE_FILE, f"bmsignup-{uuid.uuid4().hex[:8]}", client=docker_client, env={
        "SIGNUP_SECRET": secret, "BATCHMESH_INPUT": str(inp), "BATCHMESH_OUTPUT": str(out),
        "BATCHMESH_GENERATE_COUNT": str(USERS), "BATCHMESH_UID": str(os.getuid()),
        "BATCHMESH_GID": str(os.getgid()), "BATCHMESH_MANAGER_PORT": str(manager_port),
        "BATCHMESH_PROMETHEUS_PORT": str(free_port())})
    services = [s for s in project.services() if s != "grafana"]
    try:
        project.run("up", "-d", "--wait", *services, timeout=180)
        sinks = project.one("sinks")
        sinks.reload()
        assert not sinks.attrs["NetworkSettings"]["Ports"].get("8025/tcp")  # not published: network only
        assert not sinks.attrs["NetworkSettings"]["Ports"].get("8026/tcp")

        def done() -> dict[str, Any] | None:
            status = _status(manager_port)
            return status if status["counts"]["listed"] == USERS and done_in(status) else None

        status = wait_for(done, 120, "the sign-up batch to be done", project)
        assert not any(stage["dead"] for stage in status["stages"].values()), status["stages"]
        check = subprocess.run([sys.executable, str(EXAMPLE / "check.py"), "--record", str(out / "sinks"),
                                "--input", str(inp / "signups.jsonl")], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, f"{check.stdout}\n{project.logs()}"
        assert f"{USERS} users, 0 resends" in check.stdout
        for path in out.rglob("*"):  # the secret reached the workers by the environment alone
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
        assert secret not in COMPOSE_FILE.read_text()
    finally:
        project.down()
    assert project.leftovers() == {"containers": [], "volumes": [], "networks": []}
