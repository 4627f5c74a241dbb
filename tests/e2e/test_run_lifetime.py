"""Nothing a run started outlives it (issue 10, fault 3), with real `batchmesh run` processes: a run whose worker
command sleeps (a unique marker in its argv, also in the argv of a child in its group and of a child that left for
a session of its own) is stopped by SIGINT, SIGTERM, `--timeout` and SIGKILL of the runner; within seconds no
process with the marker remains, the exit code is 130 / 143 / 3 / killed, and no item directory is left in the
run's TMPDIR. A worker replica (or the manager running the process executor) SIGKILLed mid-item takes its command
with it, and the reclaimed item never runs twice at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from runs import ROOT

# The command: checks that no earlier copy of its item still runs, logs its start, starts a child in its own
# process group and one in a session of its own (unless told not to), sleeps, logs its end.
COMMAND = r'''
import json, os, subprocess, sys, time
marker, log, first_s, again_s, escape = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
attempt = json.load(open(os.environ["WORK_ITEM_FILE"]))["attempt"]
def alive(pid):
    try:
        return marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
lines = [line.split() for line in open(log)] if os.path.exists(log) else []
running = {l[1] for l in lines if l[0] == "start"} - {l[1] for l in lines if l[0] == "end"}
with open(log, "a") as f:
    for pid in running:
        if alive(pid):
            f.write(f"overlap {pid} {os.getpid()}\n")
    f.write(f"start {os.getpid()} {os.getppid()} {time.time()} {attempt}\n")
sleeper = [sys.executable, "-c", "import time; time.sleep(3600)"]
subprocess.Popen([*sleeper, marker + "-child"])
if escape == "yes":
    subprocess.Popen([*sleeper, marker + "-own-session"], start_new_session=True)
time.sleep(first_s if not any(l[0] == "start" for l in lines) else again_s)  # the first copy of the batch
with open(log, "a") as f:
    f.write(f"end {os.getpid()} {time.time()}\n")
'''


def write_pipeline(tmp: Path, *, executor: str = "stream", items: int = 2, first_s: float = 3600,
                   again_s: float = 0.5, escape: bool = True) -> tuple[Path, str, Path]:
    marker = f"bm-lifetime-{uuid.uuid4().hex[:10]}"
    (tmp / "in").mkdir()
    for i in range(items):
        (tmp / "in" / f"{i}.txt").write_text(str(i))
    (tmp / "cmd.py").write_text(COMMAND)
    (tmp / "t").mkdir()  # the run's TMPDIR: where item directories are made
    log = tmp / "attempts.log"
    argv = [sys.executable, str(tmp / "cmd.py"), marker, str(log), str(first_s), str(again_s),
            "yes" if escape else "no"]
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": f"life-{uuid.uuid4().hex[:6]}",
            "source": {"type": "directory", "path": str(tmp / "in"), "glob": "*.txt"},
            "defaults": {"visibility_timeout": "1s", "max_deliveries": 5},
            "stages": {"w": {"work": {"input": "source", "command": argv, "timeout": "10m", "executor": executor}}}}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, marker, log


def start(tmp: Path, pipeline: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "st"), "TMPDIR": str(tmp / "t")}
    env.pop("REDIS_URL", None)  # its own embedded Redis, in its own data dir
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(pipeline), "--out", str(tmp / "out"),
                             "--quiet", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def with_marker(marker: str) -> dict[int, str]:
    """Live processes whose argv holds the marker (only ours: it is unique), by pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_for(predicate, timeout_s: float, what: str):  # noqa: ANN001, ANN201 - a test helper
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def item_dirs(tmp: Path) -> list[Path]:
    return list((tmp / "t").glob("batchmesh-items-*"))


def kill_leftovers(marker: str) -> None:
    for pid in with_marker(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


EXITS = {"SIGINT": 130, "SIGTERM": 143, "timeout": 3, "SIGKILL": -9, "SIGINT twice": 130}


@pytest.mark.parametrize("executor,how", [("stream", "SIGINT"), ("stream", "SIGTERM"), ("stream", "timeout"),
                                          ("stream", "SIGKILL"), ("stream", "SIGINT twice"), ("process", "SIGKILL"),
                                          ("rq", "SIGTERM"), ("rq", "SIGKILL")])
def test_an_interrupted_run_leaves_nothing_behind(tmp_path: Path, executor: str, how: str) -> None:
    expected = EXITS[how]
    pipeline, marker, _ = write_pipeline(tmp_path, executor=executor)
    # the timeout leaves a loaded machine time to start the roles and the 6 commands the test waits for first
    run = start(tmp_path, pipeline, *(["--timeout", "12"] if how == "timeout" else []))
    try:
        # the items' commands (rq's one worker runs one at a time), their children in the group and in sessions of
        # their own
        expect = (1 if executor == "rq" else 2) * 3
        wait_for(lambda: len(with_marker(marker)) >= expect, 20, "the commands")
        assert item_dirs(tmp_path), "the workers keep their item files in the run's TMPDIR"
        if how == "SIGINT twice":  # a second Ctrl-C does not wait for the workers' grace period
            run.send_signal(signal.SIGINT)
            time.sleep(1)
            run.send_signal(signal.SIGINT)
            stopped = time.monotonic()
        elif how != "timeout":
            run.send_signal(getattr(signal, how))
        out, _ = run.communicate(timeout=30)
        if how == "SIGINT twice":
            assert time.monotonic() - stopped < 5, "the second Ctrl-C waited for the grace period"
        assert run.returncode == expected, out[-2000:]
        left = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (left := with_marker(marker)):
            time.sleep(0.1)
        assert not left, f"outlived the run: {left}"
        assert not item_dirs(tmp_path)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        kill_leftovers(marker)


def attempts(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("executor", ["stream", "process"])
def test_a_role_killed_mid_item_takes_its_command_with_it(tmp_path: Path, executor: str) -> None:
    """The role running the command (a worker replica; the manager for the process executor) is SIGKILLed while
    the command sleeps: the command and its children die at once, the supervisor restarts the role, the item is
    reclaimed and rerun, and the two attempts never overlap."""
    pipeline, marker, log = write_pipeline(tmp_path, executor=executor, items=1, first_s=3600, again_s=1)
    run = start(tmp_path, pipeline, "--timeout", "40")
    try:
        first = wait_for(lambda: [a for a in attempts(log) if a[0] == "start"], 20, "the first attempt")[0]
        pid, role = int(first[1]), int(first[2])
        wait_for(lambda: len(with_marker(marker)) >= 3, 20, "the command's children")
        os.kill(role, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not with_marker(marker) or None, 3, "the command to die with its role")
        gone_after = time.monotonic() - killed_at
        out, _ = run.communicate(timeout=30)
        assert run.returncode == 0, out[-2000:]
        lines = attempts(log)
        assert not [a for a in lines if a[0] == "overlap"], lines
        starts = [a for a in lines if a[0] == "start"]
        assert len(starts) == 2, lines
        assert [a[1] for a in lines if a[0] == "end"] == [starts[1][1]], lines  # the killed copy never finished
        assert int(starts[1][1]) != pid
        assert gone_after < 2, gone_after
        assert not with_marker(marker) and not item_dirs(tmp_path)
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert not manifest["dead_letters"]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        kill_leftovers(marker)
