"""Role processes for a local run: start, watch, restart the ones that die, scale workers, stop them all.

Every role serves /metrics and /healthz on a port of its own, picked free at each (re)start and passed with its
`port_flag` (a fixed `port` for the source, whose URL the manager is given). The live ones are written as a
Prometheus file_sd targets file, rewritten atomically whenever a role starts or stops.

Nothing a run starts outlives it (services/core/lifeline.py): the supervisor is a child subreaper, every role
carries the run's token and dies with the supervisor (PR_SET_PDEATHSIG), and a command left behind by a role that
died (SIGKILL) is re-parented here and killed at the next look (`sweep`), its item files removed."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.core import lifeline
from services.core.command import ITEM_DIR_PREFIX

log = logging.getLogger(__name__)


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

    def restart_dead(self, max_restarts: int = 5) -> list[str]:
        """Restart roles that exited on their own (a crash): returns the names of roles that gave up."""
        failed, died = [], False
        for role in self.roles.values():
            if role.process is None or role.process.poll() is None:
                continue
            died = True
            if role.restarts >= max_restarts:
                failed.append(role.name)
                continue
            role.restarts += 1
            log.warning("role exited; restarting", extra={
                "event": "role.restart", "role": role.name, "code": role.process.returncode, "log": str(role.log_file)})
            self._spawn(role)
        self.sweep(dirs=died)
        return failed

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
