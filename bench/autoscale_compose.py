"""The autoscaler live on compose: examples/autoscale/bursty.yaml rendered by `batchmesh render compose` (which
adds the `autoscaler` role: its stage has replicas 1..8), brought up with `docker compose`, bursts of files
dropped into its input dir; the `autoscaler` container scales `worker-work`'s containers through the docker SDK.

    python -m bench.autoscale_compose [--bursts 300,500] [--burst-s 8] [--quiet 75] [--png docs/autoscaling-compose.png]

Our machines reach no registry: every service runs one image built here from services/Dockerfile (tag
batchmesh:autoscale-live, so other runs' tags are left alone; Python is all an item needs), Prometheus and Grafana
are left out. Every 0.5 s it records the manager's status API (backlog; desired replicas and λ, S of the
autoscaler) and the running `worker-work` containers (docker SDK, by the compose labels); then plots them like
bench/autoscale_live.py and prints drain times, replica-seconds, scale-ups and scale-downs and the autoscaler
role's `autoscaler.scaled` log lines. `docker compose down -v` at the end."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import httpx

from services.render import compose as render

from .autoscale_live import feed, report

ROOT = Path(__file__).resolve().parents[1]
SPEC = "examples/autoscale/bursty.yaml"
IMAGE = "batchmesh:autoscale-live"
PROJECT = "bmautoscale"
SERVICES = ["redis", "prepare", "source", "manager", "worker-work", "autoscaler"]


def compose_file(path: Path) -> None:
    doc = render.compose(render.load_pipeline(ROOT / SPEC), SPEC, grafana=False)
    for svc in doc["services"].values():
        if "image" in svc and svc["image"].startswith("batchmesh"):
            svc.pop("build", None)
            svc["image"], svc["pull_policy"] = IMAGE, "never"
    path.write_text(render.dump(doc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.autoscale_compose", description=__doc__.splitlines()[0])
    p.add_argument("--bursts", default="300,500")
    p.add_argument("--burst-s", type=float, default=8.0)
    p.add_argument("--quiet", type=float, default=75.0)
    p.add_argument("--png", default=str(ROOT / "docs" / "autoscaling-compose.png"))
    p.add_argument("--csv", default=str(ROOT / "out" / "autoscale_compose.csv"))
    p.add_argument("--port", type=int, default=18081, help="the manager's published port")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.bursts.split(",")]
    client = docker.from_env()
    t0 = time.monotonic()
    client.images.build(path=str(ROOT), dockerfile="services/Dockerfile", tag=IMAGE, rm=True)
    print(f"image {IMAGE} built in {time.monotonic() - t0:.0f}s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bm-autoscale-compose-"))
    (work / "in").mkdir()
    (work / "out").mkdir()
    file = ROOT / "compose" / f".{PROJECT}.yml"  # beside the others: its paths are relative to compose/
    compose_file(file)
    env = {**os.environ, "BATCHMESH_INPUT": str(work / "in"), "BATCHMESH_OUTPUT": str(work / "out"),
           "BATCHMESH_MANAGER_PORT": str(a.port), "BATCHMESH_UID": "10001", "BATCHMESH_GID": "10001",
           "BATCHMESH_DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid)}
    cli = ["docker", "compose", "-p", PROJECT, "-f", str(file)]
    rows: list[dict[str, Any]] = []
    bursts: list[tuple[float, float]] = []
    stop = threading.Event()
    labels = [f"com.docker.compose.project={PROJECT}", "com.docker.compose.service=worker-work"]

    def running() -> int:
        return len(client.containers.list(sparse=True, filters={"label": labels, "status": "running"}))

    def record(started: float) -> None:
        while not stop.is_set():
            try:
                snap = httpx.get(f"http://127.0.0.1:{a.port}/api/v1/status", timeout=2).json()
                stage = snap["stages"]["work"]
                inputs = stage.get("autoscale") or {}
                rows.append({"t": round(time.monotonic() - started, 2),
                             "arrival_rate": inputs.get("arrival_rate") or 0.0, "service_s": inputs.get("service_s"),
                             "backlog": stage["backlog"], "desired": stage["desired_replicas"],
                             "running": running(), "done": snap["counts"]["done"]})
            except (httpx.HTTPError, KeyError, ValueError, docker.errors.DockerException):
                pass
            stop.wait(0.5)

    try:
        subprocess.run([*cli, "up", "-d", "--wait", *SERVICES], env=env, check=True, timeout=300)
        started = time.monotonic()
        recorder = threading.Thread(target=record, args=(started,), daemon=True)
        recorder.start()
        time.sleep(8)
        bursts += feed(work / "in", sizes, a.burst_s, a.quiet, started)
        stop.set()
        recorder.join(10)
        scaled = subprocess.run([*cli, "logs", "--no-color", "autoscaler"], env=env, capture_output=True, text=True)
        events = [line for line in scaled.stdout.splitlines() if "autoscaler.scaled" in line]
    finally:
        stop.set()
        subprocess.run([*cli, "down", "-v", "--remove-orphans", "--timeout", "10"], env=env, capture_output=True)
        file.unlink(missing_ok=True)
    title = (f"docker compose: worker-work containers scaled by the autoscaler role (docker SDK); item 0.5s, "
             f"concurrency 2, replicas 1..8\nbursts of {a.bursts} files over {a.burst_s:g}s (grey), then "
             f"{a.quiet:g}s quiet; autoscaler defaults: ρ 0.8, T 30s, W 30s")
    report(rows, bursts, sizes, Path(a.csv), Path(a.png), title)
    for line in events:
        try:
            e = json.loads(line.split("|", 1)[-1].strip())
            print(f"  {e['ts']} {e['service']}: {e['from']} -> {e['to']} (desired {e['desired']})")
        except (ValueError, KeyError):
            print("  " + line[-200:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
