"""The compose actuator (services.autoscaler) against a real engine: a fake compose service of two containers
(labelled as Compose labels them, on a project network), scaled up by copying a replica, down by stopping the
highest-numbered, to zero and back; then the role itself follows the manager's decision in Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from services.autoscaler.compose import NUMBER, PROJECT, SERVICE, ComposeScaler, labels_of, run_autoscaler
from services.core import Keys, Settings
from services.core.spec import Pipeline

IMAGE = "debian:bookworm-slim"


@pytest.fixture
def project(docker_client: Any) -> Iterator[tuple[str, Any]]:
    name = f"bmscale{uuid.uuid4().hex[:6]}"
    net = docker_client.networks.create(f"{name}_default", labels={PROJECT: name})
    for n in (1, 2):
        docker_client.containers.run(
            IMAGE, ["sleep", "infinity"], name=f"{name}-worker-fake-{n}", detach=True, init=True,
            labels={PROJECT: name, SERVICE: "worker-fake", NUMBER: str(n)}, environment={"WHO": "fake"},
            network=net.name, read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"])
    try:
        yield name, net
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": f"{PROJECT}={name}"}):
            c.remove(force=True)
        net.remove()


def states(scaler: ComposeScaler) -> list[tuple[int, str]]:
    return [(int(labels_of(c)[NUMBER]), c.status) for c in scaler.replicas("worker-fake")]


def test_scales_a_compose_service_through_the_sdk(docker_client: Any, project: tuple[str, Any]) -> None:
    name, net = project
    scaler = ComposeScaler(docker_client, name, stop_timeout_s=1)
    assert scaler.scale("worker-fake", 4) == 4
    assert states(scaler) == [(1, "running"), (2, "running"), (3, "running"), (4, "running")]
    new = docker_client.containers.get(f"{name}-worker-fake-4")
    attrs = new.attrs
    assert attrs["Config"]["Image"] == IMAGE and attrs["Config"]["Cmd"] == ["sleep", "infinity"]
    assert "WHO=fake" in attrs["Config"]["Env"]
    assert attrs["HostConfig"]["ReadonlyRootfs"] and attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert new.labels[PROJECT] == name and new.labels[SERVICE] == "worker-fake"
    assert "worker-fake" in attrs["NetworkSettings"]["Networks"][net.name]["Aliases"]

    assert scaler.scale("worker-fake", 1) == 1
    assert states(scaler) == [(1, "running"), (2, "exited")]  # made by us: removed; compose's own: stopped
    assert scaler.scale("worker-fake", 0) == 0
    assert states(scaler) == [(1, "exited"), (2, "exited")]  # the template is kept to copy from
    assert scaler.scale("worker-fake", 3) == 3
    assert [s for _, s in states(scaler)] == ["running"] * 3
    assert ComposeScaler(docker_client, "no-such-project").scale("worker-fake", 2) == 0


def test_the_role_follows_the_managers_decision(docker_client: Any, project: tuple[str, Any], client: redis.Redis,
                                                settings: Settings) -> None:
    name, _ = project
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": settings.pipeline,
                                        "source": {"path": "."}, "stages": {"fake": {"work": {
                                            "input": "source", "worker": "noop", "replicas": {"min": 0, "max": 5}}}}})
    keys = Keys(settings.pipeline)
    scaler = ComposeScaler(docker_client, name)

    def decide(n: int) -> None:  # what the manager's autoscaler stores every tick
        client.hset(keys.autoscale(), "fake", json.dumps({"desired": n, "arrival_rate": 1.0}))

    decide(3)
    stop = threading.Event()
    thread = threading.Thread(target=run_autoscaler, args=(pipeline, settings, stop),
                              kwargs={"project": name, "interval_s": 0.2, "client": docker_client}, daemon=True)
    thread.start()
    try:
        for want in (3, 1):
            decide(want)
            deadline = time.monotonic() + 60
            while scaler.running("worker-fake") != want:
                assert time.monotonic() < deadline, f"not scaled to {want}: {states(scaler)}"
                time.sleep(0.2)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
