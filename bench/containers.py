"""(f) The image pipeline in containers vs the local run: what the containers cost (target <= 1.3x).

    python -m bench.containers [--n 100] [--repeat 1] [--out out/bench.json]

Both sides start cold from the same N generated images and are timed from the command to the final report.json:
`batchmesh run examples/images/pipeline.yaml` (every role a local process, embedded Redis) and `docker compose -f
compose/docker-compose.yml up -d` (every role a container, `redis:7`; the images are built before the clock starts,
Grafana left out: no image of it here). Also reported: the image size of each role family, Redis `used_memory_peak`
on each side, and each container's start-to-healthy time (its first passing HEALTHCHECK minus its start)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import redis

from services.core.embedded import redis_url

from .common import median
from .report import Row, merge_save, table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "images"
COMPOSE = ROOT / "compose" / "docker-compose.yml"
TARGET = 1.3
LABEL = "(f) image pipeline in containers"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def final(out: Path, n: int) -> bool:
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(report.get("final")) and report["aggregate"].get("images") == n


def local(images: Path, tmp: Path, n: int) -> tuple[float, int]:
    inbox, out = tmp / "in", tmp / "out"
    shutil.copytree(images, inbox)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "state")}
    env.pop("REDIS_URL", None)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "services.cli", "run", str(EXAMPLE / "pipeline.yaml"), "--input",
                    str(inbox), "--out", str(out), "--quiet"], cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - began
    assert final(out, n)
    with redis_url(None, tmp / "state" / "redis") as url:
        peak = int(redis.Redis.from_url(url).info("memory")["used_memory_peak"])
    return seconds, peak


def compose(cli: list[str], env: dict[str, str], *args: str) -> None:
    subprocess.run([*cli, *args], env={**os.environ, **env}, check=True, capture_output=True, timeout=900)


def in_containers(images: Path, tmp: Path, n: int, client: Any) -> tuple[float, int, dict[str, float]]:
    inbox, out = tmp / "in", tmp / "out"
    shutil.copytree(images, inbox)
    out.mkdir()
    project = f"bmbench{uuid.uuid4().hex[:6]}"
    env = {"BATCHMESH_INPUT": str(inbox), "BATCHMESH_OUTPUT": str(out), "BATCHMESH_PROMETHEUS_PORT": "0"}
    cli = ["docker", "compose", "-p", project, "-f", str(COMPOSE)]
    services = subprocess.run([*cli, "config", "--services"], capture_output=True, text=True, check=True,
                              env={**os.environ, **env}).stdout.split()
    try:
        began, since = time.perf_counter(), int(time.time()) - 1
        compose(cli, env, "up", "-d", *[s for s in services if s != "grafana"])
        while not final(out, n):
            time.sleep(0.1)
        seconds = time.perf_counter() - began
        healthy = start_to_healthy(client, project, since)
        containers = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        redis_ = next(c for c in containers if c.labels["com.docker.compose.service"] == "redis")
        address = next(iter(redis_.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        peak = int(redis.Redis(host=address).info("memory")["used_memory_peak"])
    finally:
        compose(cli, env, "down", "-v", "--timeout", "10")
    return seconds, peak, healthy


def start_to_healthy(client: Any, project: str, since: int) -> dict[str, float]:
    """Per service: seconds from its container's `start` event to its first `health_status: healthy` event (the
    engine's own event times; a container's health log keeps only its last 5 checks)."""
    started: dict[str, tuple[str, int]] = {}
    healthy: dict[str, float] = {}
    for event in client.events(since=since, until=int(time.time()) + 1, decode=True,
                               filters={"type": "container", "label": f"com.docker.compose.project={project}"}):
        service = event["Actor"]["Attributes"].get("com.docker.compose.service", "?")
        if event["status"] == "start" and service not in started:
            started[service] = (event["id"], event["timeNano"])
        elif event["status"] == "health_status: healthy" and service in started and service not in healthy:
            healthy[service] = (event["timeNano"] - started[service][1]) / 1e9
    return healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.containers", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "out" / "bench.json"), help="'' = do not save")
    args = parser.parse_args(argv)
    client = docker.from_env()
    say("building the images (not timed) ...")
    subprocess.run(["docker", "compose", "-f", str(COMPOSE), "build", "-q"], check=True, capture_output=True)
    sizes = {tag: client.images.get(tag).attrs["Size"] / 1e6 for tag in sorted(
        {t for image in client.images.list(name="batchmesh*") for t in image.tags})}
    runs: dict[str, list[float]] = {"local": [], "containers": []}
    peaks: dict[str, list[int]] = {"local": [], "containers": []}
    healthy: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as root:
        tmp = Path(root)
        subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(tmp / "images"), "--count", str(args.n)],
                       check=True, capture_output=True)
        for rep in range(args.repeat):
            seconds, peak = local(tmp / "images", tmp / f"local-{rep}", args.n)
            runs["local"].append(seconds)
            peaks["local"].append(peak)
            say(f"run {rep + 1}/{args.repeat} local      {seconds:6.1f} s, Redis peak {peak / 1e6:.1f} MB")
            seconds, peak, ready = in_containers(tmp / "images", tmp / f"compose-{rep}", args.n, client)
            runs["containers"].append(seconds)
            peaks["containers"].append(peak)
            healthy.append(ready)
            say(f"run {rep + 1}/{args.repeat} containers {seconds:6.1f} s, Redis peak {peak / 1e6:.1f} MB")
    row = Row(f"{LABEL}, {args.n} images, cold start to final report", median(runs["containers"]), "s",
              median(runs["local"]), "batchmesh run, same images", "ratio<=", TARGET, runs["containers"],
              runs["local"])
    print(table([row]))
    print("image sizes: " + ", ".join(f"{tag} {mb:,.0f} MB" for tag, mb in sizes.items()))
    print(f"Redis used_memory_peak: local {median(peaks['local']) / 1e6:.1f} MB, "
          f"containers {median(peaks['containers']) / 1e6:.1f} MB")
    by_role = {name: median([h[name] for h in healthy if name in h]) for name in sorted(set().union(*healthy))}
    print("start to healthy (s): " + ", ".join(f"{name} {s:.1f}" for name, s in by_role.items()))
    if args.out:
        config = {"command": " ".join(["python -m bench.containers", *(sys.argv[1:] if argv is None else argv)]),
                  "n": args.n, "repeat": args.repeat}
        merge_save(Path(args.out), row, config, {"runs": runs, "redis_peak_bytes": peaks, "image_mb": sizes,
                                                 "start_to_healthy_s": by_role}, key="f", label=LABEL)
        print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
