"""A compose project under test: `docker compose -p PROJECT -f FILE ...` with its own host directories, found
and cleaned up by the project label (never by container name: Compose v1 and v2+ name containers differently)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@dataclass
class ComposeProject:
    file: Path
    project: str
    env: dict[str, str] = field(default_factory=dict)
    client: Any = field(default_factory=docker.from_env)
    cli: tuple[str, ...] = ("docker", "compose")  # or ("docker-compose",): Compose v1

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.cli, "-p", self.project, "-f", str(self.file), *args], text=True,
                              capture_output=True, timeout=timeout, env={**os.environ, **self.env})
        if check and done.returncode:
            raise AssertionError(f"{' '.join(self.cli)} {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def services(self) -> list[str]:
        return self.run("config", "--services").stdout.split()

    def containers(self, service: str | None = None) -> list[Any]:
        labels = [f"{PROJECT_LABEL}={self.project}", *([f"{SERVICE_LABEL}={service}"] if service else [])]
        return self.client.containers.list(all=True, filters={"label": labels})

    def one(self, service: str) -> Any:
        running = [c for c in self.containers(service) if c.status == "running"]
        assert running, f"no running container of {service}"
        return running[0]

    def ip(self, service: str) -> str:
        """The address of a service's container on the project's network (a container this run created)."""
        container = self.one(service)
        container.reload()
        return next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]

    def logs(self, tail: int = 40) -> str:
        return "\n".join(f"--- {c.labels.get(SERVICE_LABEL)} ({c.status})\n"
                         + c.logs(tail=tail).decode(errors="replace") for c in self.containers())

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "10", check=False)

    def leftovers(self) -> dict[str, list[str]]:
        """What `down -v` should have removed: containers, volumes and networks labelled with the project."""
        label = {"label": f"{PROJECT_LABEL}={self.project}"}
        return {
            "containers": [c.name for c in self.client.containers.list(all=True, filters=label)],
            "volumes": [v.name for v in self.client.volumes.list(filters=label)],
            "networks": [n.name for n in self.client.networks.list(filters=label)],
        }


def wait_for(check: Callable[[], Any], timeout: float, what: str, project: ComposeProject | None = None,
             every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; on timeout fail with the containers' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (OSError, ValueError, KeyError):
            pass  # a file half-written, a service not up yet: poll again
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                         + (project.logs() if project else ""))
