"""The book's image pipeline under `docker compose up` from the committed compose/docker-compose.yml, the project's
images built by Compose itself, on a real engine — with faults injected mid-run:

- one worker container and one router container SIGKILLed: the restart policy brings them back;
- Redis SIGKILLed and restarted by its restart policy (AOF, appendfsync always): nothing acknowledged is lost
  and every role reconnects by itself with backoff; the disconnection shows in `batchmesh_redis_disconnects_total`.

The SIGKILL goes to the container's main process (its PID on this host), as the OOM killer or a crash would
deliver it: Docker counts `docker kill` itself as a manual stop, after which no restart policy restarts a container
(moby/moby#33306, #21359; checked on this engine), so `docker kill` would test the operator, not the mesh.

Then: report.json equals what `batchmesh run` writes for the same input, blurred copies exist, the originals are
deleted and only after the join fired; a real Prometheus scraped the mesh and every panel of the generated
dashboards returns data; the alert rules loaded; `docker compose down -v` leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from compose_project import ComposeProject, wait_for

from services.core import Keys
from services.core.results import results
from services.render.grafana import dashboards, default_pipelines, panel_queries

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the PromQL helpers
from promql import free_port, queries_without_data, rules_health, wait_for_data, wait_for_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "images"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
IMAGES = 16
FOLDS = ("vehicles", "colours", "images")


def local_report(tmp: Path) -> dict:
    """What `batchmesh run` writes for the same generated images (same generator, same seed, same bytes)."""
    data = tmp / "local-in"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(data), "--count", str(IMAGES)], check=True,
                   capture_output=True)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "local-state")}
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", str(EXAMPLE / "pipeline.yaml"), "--input",
                           str(data), "--out", str(tmp / "local-out"), "--quiet", "--timeout", "400"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=450)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "local-out" / "report.json").read_text())


def final_report(out: Path) -> dict | None:
    report = json.loads((out / "report.json").read_text())
    return report if report.get("final") and report["aggregate"].get("images") == IMAGES else None


def crash(container: Any) -> None:
    """SIGKILL the container's main process, as a crash would (see the module docstring)."""
    container.reload()
    os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)


@pytest.fixture
def project(docker_client: object, tmp_path: Path) -> ComposeProject:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    out.mkdir()
    env = {"BATCHMESH_INPUT": str(inbox), "BATCHMESH_OUTPUT": str(out), "BATCHMESH_GENERATE_COUNT": str(IMAGES),
           "BATCHMESH_PROMETHEUS_PORT": str(free_port())}
    compose = ComposeProject(COMPOSE_FILE, f"bmtest{uuid.uuid4().hex[:8]}", env)
    yield compose
    compose.down()


# A hang guard above the default 300 s: 200 s were measured on a loaded 2-core machine with warm image caches; the
# waits below allow more (the build alone up to 900 s), and a slower machine must fail on them, not on the guard.
@pytest.mark.timeout(900)
def test_image_pipeline_in_containers(project: ComposeProject, tmp_path: Path) -> None:
    expected = local_report(tmp_path)
    inbox, out = tmp_path / "in", tmp_path / "out"
    services = [s for s in project.services() if s != "grafana"]  # no Grafana image can be had here
    project.run("up", "-d", "--build", *services, timeout=900)

    # Mid-run: a worker replica and a router die by SIGKILL while items flow.
    wait_for(lambda: len(list(out.glob("blur-*/*/*/*.png"))) >= 2, 300, "the first blurred images", project)
    victims = {name: project.one(name) for name in ("worker-classify-0", "router-fanout")}
    for container in victims.values():
        crash(container)
    # ... and Redis too, once the recognition has started: the roles must ride it out on their own.
    wait_for(lambda: list(out.glob("classify-*/*/*/vehicles.json")), 300, "the first classified image", project)
    crash(project.one("redis"))

    report = wait_for(lambda: final_report(out), 420, "the final report.json", project)
    wait_for(lambda: not list(inbox.glob("*.jpg")), 120, "every original deleted", project)

    assert {k: report["aggregate"][k] for k in FOLDS} == {k: expected["aggregate"][k] for k in FOLDS}
    assert report["items"] == expected["items"] == IMAGES
    assert len(list(out.glob("blur-*/*/*/*.png"))) == IMAGES, "a plate-blurred copy of every image"
    assert len(list(out.glob("faces-*/*/*/*.png"))) == IMAGES, "a face-blurred copy of every image"
    for name, container in victims.items():
        container.reload()
        assert container.attrs["RestartCount"] >= 1 and container.status == "running", name
    redis_container = project.one("redis")
    redis_container.reload()
    assert redis_container.attrs["RestartCount"] >= 1

    client = redis.Redis(host=project.ip("redis"), port=6379)  # a container of this run, on its own network
    keys = Keys("images")
    deletions = {k: v for k, v in results(client, keys).items() if "deleted" in v}
    assert len(deletions) == IMAGES and all(d["deleted"] for d in deletions.values())
    [joined] = [int(entry_id.split(b"-")[0]) / 1000 for entry_id, fields in client.xrange(keys.events())
                if json.loads(fields[b"event"])["stage"] == "barrier"]
    assert joined <= min(d["at"] for d in deletions.values()), "an original was deleted before the join fired"
    stages = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())["stages"]
    assert sum(client.xlen(keys.dead_letters(stage)) for stage in stages) == 0, "no item dead-lettered"

    # A real Prometheus scraped the mesh: the Redis outage is in the metrics, every panel returns data.
    prometheus = f"http://127.0.0.1:{project.env['BATCHMESH_PROMETHEUS_PORT']}"
    wait_for_targets(prometheus, {"source", "manager", "router", "worker"}, timeout=60)
    missing = wait_for_data(prometheus, [("disconnects", "sum(batchmesh_redis_disconnects_total) > 0")], 60)
    assert not missing, missing
    boards = dashboards(default_pipelines())
    variables = {"pipeline": "images", "stage": "classify-0"}
    queries = [(f"{file}: {title}", expr) for file, board in boards.items()
               for title, expr in panel_queries(board, variables)]
    failing = wait_for_data(prometheus, queries, timeout=60, allow_nan=True)
    assert not failing, "panels without data:\n" + "\n".join(failing)
    assert not queries_without_data(prometheus, [("up", "up")])
    health = rules_health(prometheus)
    alerts = yaml.safe_load((ROOT / "compose" / "prometheus" / "alerts.yml").read_text())
    names = {r.get("alert") or r.get("record") for g in alerts["groups"] for r in g["rules"]}
    assert names and names <= set(health) and all(h != "err" for h in health.values()), health

    project.down()
    assert project.leftovers() == {"containers": [], "volumes": [], "networks": []}
