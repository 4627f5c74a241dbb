"""The sign-up flow end to end (`batchmesh run`, every role a process, real SMTP and webhook sinks), once plainly
and once with one failure zone's worker SIGKILLed mid-run: every user gets exactly one verification e-mail, the
welcome by exactly one channel, the promo exactly when opted in; nothing is lost."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "signup"


def load(name: str) -> ModuleType:
    key = f"signup_e2e_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLE / f"{name}.py")
        assert spec and spec.loader
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


def prepare(tmp: Path, users: int) -> tuple[Path, Path, list[dict]]:
    signups = tmp / "signups.jsonl"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(signups), "--count", str(users), "--seed", "7"],
                   check=True, capture_output=True)
    spec = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    spec["defaults"] = {"visibility_timeout": "1s", "max_deliveries": 5}  # reclaim a dead zone's items quickly
    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(spec))
    return pipeline, signups, [json.loads(line) for line in signups.read_text().splitlines()]


def start_run(tmp: Path, pipeline: Path, signups: Path, ports: object, sinks: ModuleType) -> subprocess.Popen[str]:
    env = {**os.environ, **sinks.worker_env(ports), "SIGNUP_SECRET": "e2e-only", "BATCHMESH_DATA_DIR": str(tmp / "st")}
    env.pop("REDIS_URL", None)
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(pipeline), "--input", str(signups),
                             "--out", str(tmp / "out"), "--quiet", "--timeout", "240"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def zone_worker_pid(run_pid: int, stage: str) -> int | None:
    """The pid of the `batchmesh worker --stage <stage>` process that our run started (a child of it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == run_pid and b"worker" in cmdline and stage.encode() in cmdline:
            return int(proc.name)
    return None


def kill_zone_mid_batch(run: subprocess.Popen[str], tmp: Path, stage: str, stream: str) -> bool:
    """SIGKILL the zone's worker while it holds items it has not committed. True if that moment was caught."""
    deadline = time.monotonic() + 60
    marker = tmp / "st" / "redis" / "redis.url"
    while time.monotonic() < deadline and run.poll() is None:
        url = marker.read_text().strip() if marker.exists() else ""
        if url:
            client = redis.Redis.from_url(url)
            try:
                pending = client.xpending(f"bm:{{signup}}:s:{stream}", stage)["pending"]
            except redis.ResponseError:
                pending = 0
            pid = zone_worker_pid(run.pid, stage)
            if pending and pid:
                os.kill(pid, signal.SIGKILL)
                return True
        time.sleep(0.005)
    return False


def run_flow(tmp: Path, users: int, kill_zone: bool) -> tuple[list[str], list[str], int]:
    sinks, check = load("sinks"), load("check")
    pipeline, signups, rows = prepare(tmp, users)
    with sinks.running_sinks(tmp / "record") as ports:
        run = start_run(tmp, pipeline, signups, ports, sinks)
        killed = kill_zone_mid_batch(run, tmp, "verify-1", "zones.1") if kill_zone else False
        _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    strict = check.check(tmp / "record", rows)
    lenient = check.check(tmp / "record", rows, allow_resends=True)
    return strict, lenient, int(killed)


def test_signup_flow_delivers_exactly_once(tmp_path: Path) -> None:
    strict, _, _ = run_flow(tmp_path, users=120, kill_zone=False)
    assert strict == []


def test_signup_flow_survives_a_zone_worker_killed_mid_run(tmp_path: Path) -> None:
    strict, lenient, killed = run_flow(tmp_path, users=600, kill_zone=True)
    assert killed, "the zone worker finished before it could be killed mid-batch"
    # Nothing lost, nothing to the wrong person, one distinct verification (Message-ID) per user. The only
    # repetition a SIGKILL can cause is the one message whose send had completed when the worker died.
    assert lenient == []
    assert len(strict) <= 1, strict
