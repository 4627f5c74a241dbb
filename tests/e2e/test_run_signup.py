"""The sign-up flow end to end (`batchmesh run`, every role a process, real SMTP and webhook sinks), once plainly
and once with one failure zone's worker SIGKILLed mid-run: every user gets exactly one verification e-mail, the
welcome by exactly one channel, the promo exactly when opted in; nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import yaml
from example_modules import load_example
from runs import ROOT, kill_worker_mid_batch, start_run

EXAMPLE = ROOT / "examples" / "signup"


load = partial(load_example, "signup")


def prepare(tmp: Path, users: int) -> tuple[Path, Path, list[dict]]:
    signups = tmp / "signups.jsonl"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(signups), "--count", str(users), "--seed", "7"],
                   check=True, capture_output=True)
    spec = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    spec["defaults"] = {"visibility_timeout": "1s", "max_deliveries": 5}  # reclaim a dead zone's items quickly
    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(spec))
    return pipeline, signups, [json.loads(line) for line in signups.read_text().splitlines()]


def run_flow(tmp: Path, users: int, kill_zone: bool) -> tuple[list[str], list[str], int]:
    sinks, check = load("sinks"), load("check")
    pipeline, signups, rows = prepare(tmp, users)
    with sinks.running_sinks(tmp / "record") as ports:
        run = start_run(tmp, pipeline, signups, {**sinks.worker_env(ports), "SIGNUP_SECRET": "e2e-only"})
        killed = kill_worker_mid_batch(run, tmp, "signup", "verify-1", "zones.1") if kill_zone else False
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
