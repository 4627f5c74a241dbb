"""Role processes for a local run: start, watch, restart the ones that die, scale workers, stop them all.

Every role serves /metrics and /healthz on a port of its own, picked free at each (re)start and passed with its
`port_flag` (a fixed `port` for the source, whose URL the manager is given). The live ones are written as a
Prometheus file_sd targets file, rewritten atomically whenever a role starts or stops.

Nothing a run starts outlives it (services/core/lifeline.py): the supervisor is a child subreaper, every role
carries the run's token and dies with the supervisor (PR_SET_PDEATHSIG), and a command left behind by a role that
died (SIGKILL) is re-parented here and killed at the next look (`sweep`), its item files removed.

Restarts (`restart_dead`). A role that exits on its own is restarted after a backoff that doubles with each crash
in a row (RESTART_BACKOFF_S, x2, at most RESTART_MAX_S, each wait cut by up to half at random so roles that died
together do not come back together), reset once the role made progress or stayed up RESTART_STABLE_S. It is never
given up for crashing as such: a worker that dies on poison items (an in-process worker calling os._exit) keeps
coming back until each poison item has used up its max_deliveries and is dead-lettered. The supervisor gives a
role up only when it crashed `give_up_after` times in a row with nothing committed in between — no item of its
stage (or, for a role without a stage, of any stage) completed, failed or was dead-lettered: the role cannot start
at all (bad config, a missing dependency), and the run ends with an error naming it instead of looping. The
runner sets `give_up_after` above every stage's max_deliveries (a poison item may crash its worker that many
times before a commit dead-letters it). While Redis is unreachable there is no progress to judge: crashes then
never count towards giving up. Nor does a SIGKILL: a role killed from outside (an operator, the OOM killer, a
chaos test, a poison item killing its own worker) is not a role that cannot start, and comes back with its
backoff however often it is killed (found by the handed chaos case: five kills of a starting router in a row)."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core import lifeline
from services.core.command import ITEM_DIR_PREFIX

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 0.25  # the first restart's wait; doubles with each crash in a row
RESTART_MAX_S = 30.0
RESTART_STABLE_S = 60.0  # a role up this long has recovered: its next crash waits RESTART_BACKOFF_S again
GIVE_UP_AFTER = 5  # crashes in a row with nothing committed in between (the runner raises it per pipeline)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Role:
    name: str
    argv: list[str]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    port_flag: str | None = None  # e.g. --metrics-port: a fresh free port is appended at every spawn
    port: int = 0  # where it serves /metrics and /healthz (0 = nowhere)
    labels: dict[str, str] = field(default_factory=dict)  # file_sd labels: role, stage
    stalled: int = 0  # crashes in a row with no progress of its stage in between
    in_a_row: int = 0  # crashes in a row (the restart backoff); reset by progress or RESTART_STABLE_S up
    progress_mark: int | None = None  # its stage's progress when it last crashed
    restart_at: float = 0.0  # when a dead role is started again (0: not waiting)
    last_code: int | None = None


@dataclass
class Supervisor:
    """Each role is `python -m services.cli <role> …`: the same entry points the containers use."""

    env: dict[str, str]
    log_dir: Path
    roles: dict[str, Role] = field(default_factory=dict)
    targets_file: Path | None = None  # Prometheus file_sd JSON of the roles' metrics ports
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # in every role's (and command's) environment

    def __post_init__(self) -> None:
        lifeline.become_subreaper()  # orphans of the roles' commands come to us, not to init
        self.env = {**self.env, lifeline.RUN_ENV: self.token}

    def start(self, name: str, *args: str, port_flag: str | None = None, port: int = 0,
              labels: dict[str, str] | None = None) -> Role:
        return self.start_argv(name, [sys.executable, "-m", "services.cli", *args], port_flag=port_flag,
                               port=port, labels=labels)

    def start_argv(self, name: str, argv: list[str], *, port_flag: str | None = None, port: int = 0,
                   labels: dict[str, str] | None = None) -> Role:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        role = Role(name, argv, self.log_dir / f"{name}.log", port_flag=port_flag, port=port,
                    labels=dict(labels or {}))
        self.roles[name] = role
        self._spawn(role)
        return role

    def _spawn(self, role: Role) -> None:
        argv = list(role.argv)
        if role.port_flag:
            role.port = free_port()
            argv += [role.port_flag, str(role.port)]
        if argv[1:3] != ["-m", "services.cli"]:  # not a batchmesh role (rq's worker): armed by a wrapper, then exec
            argv = [sys.executable, lifeline.__file__, *argv]  # by path: stdlib only, no package import
        env = {**self.env, lifeline.PARENT_ENV: str(os.getpid())}  # dies with us, even if we are SIGKILLed
        with open(role.log_file, "ab") as out:
            role.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=out, start_new_session=True)
        role.started_at = time.monotonic()
        self.write_targets()
        log.debug("role started", extra={"event": "role.start", "role": role.name, "pid": role.process.pid})

    def restart_dead(self, progress: dict[str, int] | None = None, *, max_restarts: int | None = None,
                     give_up_after: int = GIVE_UP_AFTER) -> list[str]:
        """Restart roles that exited on their own (a crash), each after its backoff (see the module docstring).
        `progress` maps a stage to a number that grows whenever it commits something ("" = the whole pipeline;
        see `progress_of`); None = unknown now (Redis unreachable). `max_restarts` caps restarts outright (0:
        report a crash at once). Returns the names of the roles given up."""
        failed, died, now = [], False, time.monotonic()
        for role in self.roles.values():
            if role.process is None or role.process.poll() is None:
                continue
            if role.restart_at:  # dead, waiting for its backoff
                if now >= role.restart_at:
                    role.restart_at = 0.0
                    role.restarts += 1
                    self._spawn(role)
                continue
            died = True
            role.last_code = role.process.returncode
            if max_restarts is not None and role.restarts >= max_restarts:
                failed.append(role.name)
                continue
            mark = None if progress is None else progress.get(role.labels.get("stage") or "", progress.get("", 0))
            progressed = mark is not None and role.progress_mark is not None and mark != role.progress_mark
            if progressed or now - role.started_at >= RESTART_STABLE_S:
                role.in_a_row = 0
            if progressed:
                role.stalled = 0
            if mark is not None:
                if role.last_code != -signal.SIGKILL:
                    role.stalled += 1
                role.progress_mark = mark
            if role.stalled >= give_up_after:
                failed.append(role.name)
                continue
            role.in_a_row += 1
            wait = min(RESTART_MAX_S, RESTART_BACKOFF_S * 2 ** (role.in_a_row - 1)) * (1 - 0.5 * random.random())
            role.restart_at = now + wait
            log.warning("role exited; restarting", extra={
                "event": "role.restart", "role": role.name, "code": role.last_code, "in_a_row": role.in_a_row,
                "without_progress": role.stalled, "wait_s": round(wait, 3), "log": str(role.log_file)})
        self.sweep(dirs=died)
        return failed

    def describe_exit(self, name: str) -> str:
        """`name: exited with code N; last log line: …` (the last line of its log, if any)."""
        role, tail = self.roles[name], _last_line(self.roles[name].log_file)
        return f"{name}: exited with code {role.last_code}" + (f"; last log line: {tail}" if tail else "")

    def describe_given_up(self, names: list[str]) -> str:
        """One line per role given up: how it crashed and the last line of its log."""
        lines = []
        for name in names:
            role = self.roles[name]
            tail = _last_line(role.log_file)
            lines.append(f"{name}: exited with code {role.last_code}, {role.stalled} times in a row with nothing "
                         f"committed in between" + (f"; last log line: {tail}" if tail else ""))
        return "\n".join(lines)

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        role = self.roles.pop(name, None)
        self.write_targets()
        if role and role.process and role.process.poll() is None:
            _terminate(role.process, grace_s)
        self.sweep(dirs=True)

    def sweep(self, dirs: bool = False) -> list[int]:
        """Kill what a dead role left running (its commands, re-parented to us: they carry the run's token) and
        remove the item files of processes that died without cleaning up. Cheap when there is nothing to do."""
        live = {r.process.pid for r in self.roles.values() if r.process is not None and r.process.returncode is None}
        strays = lifeline.reap_strays(self.token, live)
        if strays:
            log.warning("killed commands left by a role that died", extra={"event": "role.strays", "pids": strays})
        if strays or dirs:
            lifeline.sweep_dirs(Path(tempfile.gettempdir()), ITEM_DIR_PREFIX)
        return strays

    def targets(self) -> list[dict[str, object]]:
        """The file_sd entries: one per role serving metrics, `{"targets": ["127.0.0.1:PORT"], "labels": {...}}`."""
        return [{"targets": [f"127.0.0.1:{r.port}"], "labels": {**r.labels, "role_name": r.name}}
                for r in sorted(self.roles.values(), key=lambda r: r.name) if r.port]

    def write_targets(self) -> None:
        """Rewrite the targets file atomically (Prometheus never reads half a file)."""
        if self.targets_file is None:
            return
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps(self.targets(), indent=2) + "\n")
        partial.replace(self.targets_file)

    def stop_all(self, grace_s: float = 10.0) -> None:
        # Workers first (they commit their batch), then the manager, then the source.
        order = sorted(self.roles, key=lambda n: (not n.startswith("worker"), n != "manager"))
        procs = [self.roles[n].process for n in order]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            for proc in procs:
                if proc is None:
                    continue
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
        finally:  # a second Ctrl-C skips the grace: everything is killed now
            for proc in procs:
                if proc is not None and proc.returncode is None:
                    _kill_group(proc)
            self.roles.clear()
            self.sweep(dirs=True)  # the commands of roles killed after the grace, and their item files
            self.write_targets()


def progress_of(snapshot: dict[str, Any]) -> dict[str, int]:
    """Per stage, a number that grows with every commit there (items out, failed, dead-lettered, filtered or
    spilled); "" is the sum over every stage plus the items done or dead (a role without a stage: any progress)."""
    per = {name: sum(int(st.get(k, 0)) for k in ("out", "failed", "dead", "filtered", "spilled"))
           for name, st in snapshot.get("stages", {}).items()}
    counts = snapshot.get("counts", {})
    per[""] = sum(per.values()) + int(counts.get("done", 0)) + int(counts.get("dead", 0))
    return per


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-limit:] if lines else ""


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the role's own process group (commands it ran have their own)
    except ProcessLookupError:
        pass
    proc.wait()
