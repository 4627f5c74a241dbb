"""Scale a compose service's containers through the docker SDK (never a shell, never `docker compose`).

A service's replicas are the containers labelled `com.docker.compose.project` = the project and
`com.docker.compose.service` = the service. Scaling up first starts stopped replicas, then creates new ones from
an existing replica (the template: the lowest container number): its image, command, entrypoint, environment,
user, working dir, health check, labels (with a new `com.docker.compose.container-number`) and host config
(mounts, restart policy, read-only root, tmpfs, capabilities, security options), on the same project networks with
the service name as DNS alias (so Prometheus and the other roles find it as compose's own replicas). Scaling down
stops the highest-numbered replicas (SIGTERM, then the grace period: a worker finishes its batch) and removes the
ones it made; the template is only ever stopped, never removed, so there is always one to copy."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from services.core.redis_connect import connect
from services.core.settings import Settings
from services.core.spec import Pipeline

log = logging.getLogger(__name__)

PROJECT, SERVICE, NUMBER = "com.docker.compose.project", "com.docker.compose.service", \
    "com.docker.compose.container-number"
ORIGIN = "io.batchmesh.autoscaler"  # on containers this role created (and may remove)
HOST_KEYS = ("Binds", "Mounts", "RestartPolicy", "ReadonlyRootfs", "Tmpfs", "CapDrop", "CapAdd", "SecurityOpt",
             "Init", "NetworkMode", "LogConfig", "Memory", "NanoCpus", "CpuShares", "PidsLimit", "ShmSize", "Ulimits",
             "ExtraHosts", "GroupAdd", "Privileged", "IpcMode", "OomKillDisable")


def labels_of(c: Any) -> dict[str, str]:
    """A container's labels, from a sparse listing (no inspect per container: none can vanish in between)."""
    return c.attrs.get("Labels") or c.attrs.get("Config", {}).get("Labels") or {}


def _number(c: Any) -> int:
    try:
        return int(labels_of(c).get(NUMBER, "0"))
    except ValueError:
        return 0


class ComposeScaler:
    def __init__(self, client: Any, project: str, stop_timeout_s: int = 30) -> None:
        self.client, self.project, self.stop_timeout_s = client, project, stop_timeout_s

    def replicas(self, service: str) -> list[Any]:
        """Every container of the service (any state), by container number."""
        found = self.client.containers.list(all=True, sparse=True, filters={
            "label": [f"{PROJECT}={self.project}", f"{SERVICE}={service}"]})
        return sorted(found, key=_number)

    def running(self, service: str) -> int:
        return sum(1 for c in self.replicas(service) if c.status in ("running", "restarting"))

    def scale(self, service: str, want: int) -> int:
        """Make `want` replicas of `service` run; returns how many run. A service with no container at all cannot
        be scaled (nothing to copy): a warning, and 0."""
        want = max(want, 0)
        replicas = self.replicas(service)
        if not replicas:
            log.warning("no container of the service to scale", extra={
                "event": "autoscaler.no_template", "project": self.project, "service": service})
            return 0
        up = [c for c in replicas if c.status in ("running", "restarting")]
        down = [c for c in replicas if c not in up]
        for c in down[:max(want - len(up), 0)]:  # stopped replicas first: cheapest
            c.start()
            up.append(c)
        next_number = max(map(_number, replicas)) + 1
        while len(up) < want:
            up.append(self._create(replicas[0], service, next_number))
            next_number += 1
        if len(up) > want:
            for c in sorted(up, key=_number, reverse=True)[:len(up) - want]:
                c.stop(timeout=self.stop_timeout_s)
                if labels_of(c).get(ORIGIN) and c.id != replicas[0].id:
                    c.remove()
                up.remove(c)
        return len(up)

    def _create(self, template: Any, service: str, number: int) -> Any:
        attrs = self.client.api.inspect_container(template.id)
        config, host = attrs["Config"], attrs["HostConfig"]
        api = self.client.api
        networks = list((attrs.get("NetworkSettings") or {}).get("Networks") or {})
        host_config = {k: host[k] for k in HOST_KEYS if host.get(k) is not None}
        if networks:
            host_config["NetworkMode"] = networks[0]
        labels = {**config.get("Labels", {}), NUMBER: str(number), ORIGIN: "1"}
        name = f"{self.project}-{service}-{number}"
        created = api.create_container(
            image=config["Image"], command=config.get("Cmd"), entrypoint=config.get("Entrypoint"),
            environment=config.get("Env"), user=config.get("User") or None,
            working_dir=config.get("WorkingDir") or None,
            labels=labels, healthcheck=config.get("Healthcheck"), stop_signal=config.get("StopSignal"),
            host_config=host_config, name=name, detach=True,
            networking_config=api.create_networking_config({
                networks[0]: api.create_endpoint_config(aliases=[service])}) if networks else None)
        for extra in networks[1:]:
            api.connect_container_to_network(created["Id"], extra, aliases=[service])
        api.start(created["Id"])
        log.info("replica created", extra={"event": "autoscaler.create", "project": self.project,
                                           "service": service, "container": name})
        return self.client.containers.get(created["Id"])


def own_project(client: Any) -> str | None:
    """The compose project of the container this process runs in (its hostname is the container id)."""
    try:
        return client.containers.get(socket.gethostname()).labels.get(PROJECT)
    except Exception:  # not in a container, or the socket says nothing about us
        return None


def run_autoscaler(pipeline: Pipeline, settings: Settings, stop: threading.Event, *, project: str | None = None,
                   interval_s: float = 2.0, client: Any = None, service_of: dict[str, str] | None = None) -> None:
    """Every `interval_s`: read the autoscaler's decision for each stream work stage (the manager's, via
    status(): `desired_replicas`) and scale the stage's `worker-<stage>` service to it."""
    import docker
    import redis

    from services.core import redis_url
    from services.manager import status

    client = client or docker.from_env()
    project = project or own_project(client)
    if not project:
        raise RuntimeError("no compose project: pass --project (or run inside the project's containers)")
    stages = [n for n, w in pipeline.work_stages().items() if w.executor == "stream"]
    service_of = service_of or {n: f"worker-{n}" for n in stages}
    scaler = ComposeScaler(client, project)
    last: dict[str, int] = {}
    log.info("autoscaler started", extra={"event": "autoscaler.start", "project": project, "stages": stages})
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        r = connect(url, settings)
        while not stop.is_set():
            try:
                snap = status(r, pipeline)
                for name in stages:
                    want = int(snap["stages"][name].get("desired_replicas", 1))
                    running = scaler.scale(service_of[name], want)
                    if last.get(name) != running:
                        log.info("stage scaled", extra={
                            "event": "autoscaler.scaled", "stage": name, "service": service_of[name],
                            "from": last.get(name), "to": running, "desired": want,
                            "inputs": snap["stages"][name].get("autoscale")})
                        last[name] = running
            except (redis.RedisError, docker.errors.DockerException) as exc:
                log.warning("autoscaler step failed; retrying", extra={"event": "autoscaler.error",
                                                                        "error": str(exc)[:300]})
            stop.wait(interval_s)
