"""The role processes of one `batchmesh run`: its children running `python -m services.cli <role> ...`."""

from __future__ import annotations

from pathlib import Path

from services.core.lifeline import children


def role_processes(run_pid: int) -> dict[int, list[str]]:
    """pid -> the role's argv after `services.cli` (e.g. ["worker", "--pipeline", P, "--stage", S]), for every
    child of `run_pid` that is a batchmesh role (gone or unreadable processes are left out)."""
    found: dict[int, list[str]] = {}
    for pid in children(run_pid):
        try:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if "services.cli" in argv:
            found[pid] = argv[argv.index("services.cli") + 1:]
    return found
