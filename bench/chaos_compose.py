"""The chaos harness in containers: examples/chaos/chaos.yaml rendered by `batchmesh render compose` and run with
`docker compose -p <unique>` on `redis:7` (appendfsync always, as rendered), while a driver `docker kill`s random
role containers (SIGKILL to the container's process) at random moments of the batch; the same checker as the
local run (bench/chaos_check.py) judges the outcome.

    python -m bench.chaos_compose --items 20000 --kills 20 [--seed 1] [--json out/chaos-compose.json]

Who restarts a killed container: the driver, with `docker start` after `--restart-after` seconds (0.5 s). Docker
records `docker kill` as a manual stop, so the rendered `restart: unless-stopped` policy does not bring the
container back; killing the container's main process from the host's PID namespace instead would leave that to the
engine, but then the harness would test the engine's restart policy and its backoff (which doubles from 100 ms up
to a minute) rather than how our roles recover, and the kills would not be `docker kill` as the issue asks.
Reclaims are scraped from every role container's /metrics (port 9400, at its address on the project network), per
container start: a lower bound, as locally."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import redis

from services.core.spec import Pipeline, load_pipeline
from services.manager.report import status

from .chaos import SPEC, generate, summary
from .chaos_check import REDUCER, check, create_audit_groups
from .chaos_driver import Driver, Scraper, progress, role_class

ROOT = Path(__file__).resolve().parents[1]
PROJECT_LABEL, SERVICE_LABEL = "com.docker.compose.project", "com.docker.compose.service"
SKIP = ("grafana", "prometheus")  # not needed for the check: fewer containers on a 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """One compose project of the chaos spec in `workdir`, found and cleaned up by its project label."""

    def __init__(self, workdir: Path, project: str) -> None:
        self.workdir, self.project = workdir, project
        self.file = workdir / "deploy" / "chaos.yml"
        self.input, self.out = workdir / "input", workdir / "out"
        self.env = {**os.environ, "BATCHMESH_INPUT": str(self.input), "BATCHMESH_OUTPUT": str(self.out),
                    "BATCHMESH_UID": str(os.getuid()), "BATCHMESH_GID": str(os.getgid()),
                    "BATCHMESH_MANAGER_PORT": str(_free_port()), "BATCHMESH_PROMETHEUS_PORT": str(_free_port()),
                    "BATCHMESH_GRAFANA_PORT": str(_free_port())}
        self.docker = docker.from_env()

    def compose(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(["docker", "compose", "-p", self.project, "-f", str(self.file), *args], text=True,
                              capture_output=True, timeout=timeout, env=self.env)
        if done.returncode:
            raise RuntimeError(f"docker compose {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def render(self) -> None:
        subprocess.run([sys.executable, "-m", "services.cli", "render", "compose", str(SPEC), "-o", str(self.file)],
                       check=True, capture_output=True, cwd=ROOT, timeout=120)

    def containers(self, service: str | None = None) -> list[Any]:
        labels = [f"{PROJECT_LABEL}={self.project}", *([f"{SERVICE_LABEL}={service}"] if service else [])]
        return self.docker.containers.list(all=True, filters={"label": labels})

    def ip(self, container: Any) -> str:
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        return next(iter(networks.values()))["IPAddress"] if networks else ""

    def down(self) -> None:
        try:
            self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=180)
        except (RuntimeError, subprocess.TimeoutExpired):
            for c in self.containers():
                c.remove(force=True, v=True)


def _role(pipeline: Pipeline, service: str) -> tuple[str, str] | None:
    """(role class, role name) of a compose service, None for redis, prepare, generate, prometheus..."""
    if service in ("source", "manager"):
        return service, service
    for prefix, command in (("worker-", "worker"), ("router-", "router")):
        if service.startswith(prefix):
            stage = service[len(prefix):]
            cls = role_class(pipeline, command, stage)
            return (cls, f"{command}/{stage}") if cls else None
    return None


def build_image(dep: Deployment) -> str:
    """The mesh image from this checkout's services/Dockerfile, as `make images` builds it (the layer cache makes
    an unchanged tree a second's work): the roles must run the code under test, not an older image."""
    from services.render.roles import MESH_IMAGE

    dep.docker.images.build(path=str(ROOT), dockerfile="services/Dockerfile", tag=MESH_IMAGE, rm=True)
    return MESH_IMAGE


def run_compose(items: int, kills: int, *, seed: int = 1, workdir: Path, timeout: float = 1200,
                max_per_role: int = 4, restart_after: float = 0.5, build: bool = True,
                item_ms: float = 0) -> dict[str, Any]:
    pipeline = load_pipeline(SPEC)
    dep = Deployment(workdir, f"bmchaos-{uuid.uuid4().hex[:8]}")
    dep.env["CHAOS_ITEM_MS"] = str(item_ms)  # the spec's containers.env passes it to the roles
    if build:
        build_image(dep)
    dep.render()
    dep.input.mkdir(parents=True, exist_ok=True)
    dep.out.mkdir(parents=True, exist_ok=True)
    items_file = generate(dep.input / "items.jsonl", items, seed)  # the generate service finds it and skips
    services = [s for s in dep.compose("config", "--services").split() if s not in SKIP]
    try:
        dep.compose("up", "-d", "--wait", "redis")
        client = redis.Redis(host=dep.ip(dep.containers("redis")[0]), port=6379)
        create_audit_groups(client, pipeline)  # before any role runs: nothing is trimmed before the check
        began = time.monotonic()
        dep.compose("up", "-d", *services, timeout=600)
        by_id: dict[str, Any] = {}
        restarts: list[threading.Timer] = []

        def find() -> list[tuple[str, str, str]]:
            found = []
            for c in dep.containers():
                role = _role(pipeline, c.labels.get(SERVICE_LABEL, ""))
                if role and c.status == "running":
                    by_id[c.id] = c
                    found.append((c.id, *role))
            return found

        def kill(container_id: str) -> bool:
            try:
                by_id[container_id].kill()  # docker kill: SIGKILL
            except docker.errors.APIError:
                return False
            timer = threading.Timer(restart_after, lambda: by_id[container_id].start())
            timer.start()
            restarts.append(timer)
            return True

        done = threading.Event()
        stop = threading.Event()
        driver = Driver(find=find, kill=kill, progress=lambda: progress(client, pipeline, items, REDUCER),
                        kills=kills, seed=seed, max_per_role=max_per_role, done=done.is_set)
        scraper = ContainerScraper(dep, pipeline)
        threads = [threading.Thread(target=driver.run, args=(stop,), daemon=True),
                   threading.Thread(target=scraper.run, args=(stop,), daemon=True)]
        for t in threads:
            t.start()
        deadline, finished = time.monotonic() + timeout, False
        while time.monotonic() < deadline:
            try:
                if status(client, pipeline)["batch_done"]:
                    finished = True
                    break
            except redis.RedisError:
                pass
            time.sleep(0.5)
        wall = time.monotonic() - began
        done.set()
        stop.set()
        for t in threads:
            t.join(timeout=10)
        for timer in restarts:
            timer.join()
        figures = check(client, pipeline, items_file, dep.out)
        client.close()
    finally:
        dep.down()
    return {"variant": "containers (docker compose, redis:7 appendfsync always, docker kill + docker start)",
            "run_exit": 0 if finished else 3, "wall_s": round(wall, 1), "items_per_s": round(items / wall, 1),
            "item_ms": item_ms,
            **driver.figures(), "reclaimed": scraper.reclaimed(), "reclaimed_total": sum(scraper.reclaimed().values()),
            **figures, "ok": figures["ok"] and finished, "log_tail": []}


class ContainerScraper(Scraper):
    """The role containers' /metrics at their project-network address, one entry per container start."""

    def __init__(self, dep: Deployment, pipeline: Pipeline) -> None:
        super().__init__(dep.workdir / "targets.json")
        self.dep, self.pipeline = dep, pipeline

    def scrape_once(self) -> None:
        targets = []
        for c in self.dep.containers():
            if c.status == "running" and _role(self.pipeline, c.labels.get(SERVICE_LABEL, "")):
                started = c.attrs.get("State", {}).get("StartedAt", "")
                ip = self.dep.ip(c)
                if ip:
                    targets.append({"targets": [f"{ip}:9400"], "labels": {"start": f"{c.id}@{started}"}})
        self.targets_file.write_text(json.dumps(targets))
        super().scrape_once()
        for group in targets:  # key by container start, not by address: a restarted container may keep its IP
            target = group["targets"][0]
            if target in self.seen:
                self.seen[group["labels"]["start"]] = self.seen.pop(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-per-role", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "chaos-compose.json")
    parser.add_argument("--no-build", action="store_true", help="run the existing mesh image as it is")
    parser.add_argument("--item-ms", type=float, default=0, help="the worker's sleep per item (CHAOS_ITEM_MS)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bm-chaos-compose-"))
    try:
        figures = run_compose(args.items, args.kills, seed=args.seed, workdir=workdir, timeout=args.timeout,
                              max_per_role=args.max_per_role, build=not args.no_build, item_ms=args.item_ms)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(summary(figures))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures: {args.json}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
