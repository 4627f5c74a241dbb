"""Role processes for a local run: start, watch, restart the ones that die, scale workers, stop them all.

Every role serves /metrics and /healthz on a port of its own, picked free at each (re)start and passed with its
`port_flag` (a fixed `port` for the source, whose URL the manager is given). The live ones are written as a
Prometheus file_sd targets file, rewritten atomically whenever a role starts or stops."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        with open(role.log_file, "ab") as out:
            role.process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=out, start_new_session=True)
        role.started_at = time.monotonic()
        self.write_targets()
        log.debug("role started", extra={"event": "role.start", "role": role.name, "pid": role.process.pid})

    def restart_dead(self, max_restarts: int = 5) -> list[str]:
        """Restart roles that exited on their own (a crash): returns the names of roles that gave up."""
        failed = []
        for role in self.roles.values():
            if role.process is None or role.process.poll() is None:
                continue
            if role.restarts >= max_restarts:
                failed.append(role.name)
                continue
            role.restarts += 1
            log.warning("role exited; restarting", extra={
                "event": "role.restart", "role": role.name, "code": role.process.returncode, "log": str(role.log_file)})
            self._spawn(role)
        return failed

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        role = self.roles.pop(name, None)
        self.write_targets()
        if role and role.process and role.process.poll() is None:
            _terminate(role.process, grace_s)

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
        for proc in procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        self.roles.clear()
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
