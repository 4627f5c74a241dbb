"""The committed compose files on a real engine: both Compose implementations accept every file under compose/, and
the word count runs to completion with `docker compose up --wait` (every service but Grafana, which cannot be
pulled here), in its own project with its own host directories, leaving nothing behind after `down -v`."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "compose").glob("*.yml"))
CLIS = {"v2+": ("docker", "compose"), "v1": ("docker-compose",)}
PROJECT_LABEL = "com.docker.compose.project"
FILES_COUNT = 20
REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")


def _cli(name: str) -> tuple[str, ...]:
    cli = CLIS[name]
    if shutil.which(cli[0]) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no {cli[0]}")
        pytest.skip(f"no {cli[0]}")
    return cli


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_config_is_valid(path: Path, cli: str) -> None:
    # a variable the file requires (${NAME:?message}: signup.yml's SIGNUP_SECRET) gets a placeholder unless set:
    # this checks the file, test_compose_signup.py the refusal without it
    env = {name: "config-check" for name in REQUIRED.findall(path.read_text())} | dict(os.environ)
    done = subprocess.run([*_cli(cli), "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, f"{' '.join(CLIS[cli])} config -q {path.name}:\n{done.stdout}\n{done.stderr}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leftovers(client: Any, project: str) -> dict[str, list[str]]:
    label = {"label": f"{PROJECT_LABEL}={project}"}
    return {"containers": [c.name for c in client.containers.list(all=True, filters=label)],
            "volumes": [v.name for v in client.volumes.list(filters=label)],
            "networks": [n.name for n in client.networks.list(filters=label)]}


def _logs(client: Any, project: str) -> str:
    return "\n".join(f"--- {c.labels.get('com.docker.compose.service')} ({c.status})\n"
                     + c.logs(tail=30).decode(errors="replace")
                     for c in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}))


@pytest.mark.timeout(240)
def test_wordcount_runs_to_completion(docker_client: Any, mesh_image: str, tmp_path: Path) -> None:
    compose_file = ROOT / "compose" / "wordcount.yml"
    project = f"bmtest-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    env = {**os.environ, "BATCHMESH_INPUT": str(tmp_path / "input"), "BATCHMESH_OUTPUT": str(out),
           "BATCHMESH_GENERATE_COUNT": str(FILES_COUNT), "BATCHMESH_UID": str(os.getuid()),
           "BATCHMESH_GID": str(os.getgid()), "BATCHMESH_MANAGER_PORT": str(_free_port()),
           "BATCHMESH_PROMETHEUS_PORT": str(_free_port())}
    cli = [*_cli("v2+"), "-p", project, "-f", str(compose_file)]

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout, env=env)

    services = [s for s in compose("config", "--services").stdout.split() if s != "grafana"]
    try:
        up = compose("up", "-d", "--wait", *services)
        assert up.returncode == 0, f"up failed:\n{up.stderr[-3000:]}\n{_logs(docker_client, project)}"
        result = out / "wordcount.json"
        deadline = time.monotonic() + 90
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                data = json.loads(result.read_text())
                if data.get("final"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        assert data.get("final"), f"no final {result}\n{_logs(docker_client, project)}"
        assert data["aggregate"]["files"] == FILES_COUNT
        assert data["aggregate"]["tokens"] == sum(data["aggregate"]["words"].values()) > 0
    finally:
        down = compose("down", "-v", "--remove-orphans", "--timeout", "10")
    assert down.returncode == 0, down.stderr
    assert _leftovers(docker_client, project) == {"containers": [], "volumes": [], "networks": []}
