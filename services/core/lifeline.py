"""Nothing a run started outlives it: the process-lifetime rules every role and the local runner follow.

- An item's command runs in a process group (a session) of its own (core.command). When it exits, that group is
  SIGKILLed at once (a background job it left ends with it, and lets go of the output pipes); when it times out
  or its role stops or dies with the runner, the command, every descendant and all their groups are SIGKILLed
  (`kill_tree`: found while the command still lives, so a child that moved to a session of its own goes too).
- A role started by `batchmesh run` is armed with PR_SET_PDEATHSIG: when the runner dies, even by SIGKILL, the
  kernel sends the role SIGHUP; the role kills its running commands' trees, removes its item files and exits at
  once, 129 (its uncommitted items stay pending and are reclaimed: at-least-once, as after any crash). The runner
  passes its pid in BATCHMESH_PARENT_PID (consumed, commands never see it); a role whose parent is already gone
  when it arms exits. PR_SET_PDEATHSIG follows the *thread* that forked: the runner starts every role from its
  main thread, whose end is the runner's end. Roles that are not batchmesh commands (rq's worker) are armed by
  the exec wrapper below; commands themselves get no parent-death signal (no code runs between fork and exec:
  preexec_fn is unsafe with threads), their role kills them.
- The runner is a child subreaper (PR_SET_CHILD_SUBREAPER): the commands of a role that was SIGKILLed, or a
  process that double-forked away from its item, are re-parented to the runner instead of init; the runner knows
  them by the run's token in their environment (BATCHMESH_RUN), kills their trees and reaps them at its next poll
  (0.2 s): a SIGKILLed worker replica's command is dead long before its item is reclaimed and started again.

Linux only (prctl through ctypes, /proc). Elsewhere the group kills still apply, but a SIGKILLed runner's roles
and a SIGKILLed role's commands are not reached: run under something that kills the whole tree (a container, a
systemd unit with KillMode=control-group, a Kubernetes pod). Limits: a process that double-forks *and* clears
its environment escapes the runner's sweep; one that double-forks (its intermediate parent gone) after the
runner was SIGKILLed, or outside `batchmesh run` (roles started by hand), is re-parented to init."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

PARENT_ENV = "BATCHMESH_PARENT_PID"  # set by the runner for its roles: arm PR_SET_PDEATHSIG against this pid
RUN_ENV = "BATCHMESH_RUN"  # the run's token: every role and command of one run carries it in its environment
PARENT_DEATH_SIGNAL = signal.SIGHUP
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 2, 36

_libc: ctypes.CDLL | None = None
_guarded = False
_cleanups: list[Callable[[], None]] = []  # run in the parent-death handler, before the process exits


def _prctl(option: int, arg: int = 0) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc.prctl(option, arg, 0, 0, 0) == 0


def pdeathsig() -> int:
    """The parent-death signal armed for this process (0: none, or not Linux)."""
    value = ctypes.c_int(0)
    return value.value if _prctl(PR_GET_PDEATHSIG, ctypes.addressof(value)) else 0


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux >= 3.4)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def arm_parent_death() -> bool:
    """Die with the parent named in BATCHMESH_PARENT_PID (consumed: the commands this process runs do not see it).
    Returns whether a parent-death signal is armed."""
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit() and _prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL)):
        if os.getppid() != int(parent):  # the parent died before the signal was armed: it will never come
            os.kill(os.getpid(), PARENT_DEATH_SIGNAL)
        return True
    return bool(pdeathsig())  # armed before an exec (the wrapper, main below)


def guard(cleanup: Callable[[], None] | None = None) -> None:
    """Arm the parent-death signal (see the module docstring) and, from the main thread, handle it: run the
    cleanups (kill the running commands' groups, remove item files) and exit 128 + signal at once. Idempotent;
    from another thread only the cleanup is registered (signal handlers belong to the main thread)."""
    global _guarded
    if cleanup is not None and cleanup not in _cleanups:
        _cleanups.append(cleanup)
    if _guarded or threading.current_thread() is not threading.main_thread():
        return
    _guarded = True
    if arm_parent_death():
        signal.signal(PARENT_DEATH_SIGNAL, _on_parent_death)


def _on_parent_death(signum: int, _frame: object) -> None:
    for cleanup in _cleanups:
        try:
            cleanup()
        except Exception:  # noqa: BLE001, S110 - exiting anyway: the other cleanups must still run
            pass
    os._exit(128 + signum)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group (not our own); gone already is fine."""
    if pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def children(pid: int) -> list[int]:
    """Direct children of `pid` (/proc/PID/task/*/children; a scan of /proc where that file is missing)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            return [p for p, ppid in _proc_parents() if ppid == pid]
        except OSError:
            continue
    return found


def _proc_parents() -> Iterable[tuple[int, int]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue


def kill_tree(pid: int) -> None:
    """SIGKILL `pid`, every descendant and every process group among them (not our own group)."""
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += children(p)
    for p in seen:
        try:
            kill_group(os.getpgid(p))
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def carries_token(pid: int, token: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_ENV}={token}".encode() in environ.split(b"\0")


def reap_strays(token: str, keep: set[int]) -> list[int]:
    """For a subreaper: kill (and reap) every child of this process that carries the run's token and is not in
    `keep` (the live roles) — commands orphaned by a SIGKILLed role, or double-forked away. Returns their pids."""
    killed: list[int] = []
    for _ in range(8):  # killing a stray re-parents its own children to us: look again
        strays = [p for p in children(os.getpid()) if p not in keep and carries_token(p, token)]
        if not strays:
            break
        for pid in strays:
            kill_tree(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        killed += strays
    return killed


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return not Path("/proc/self").exists()  # no /proc (not Linux): it exists


def sweep_dirs(root: Path, prefix: str) -> list[Path]:
    """Remove `root/<prefix><pid>-*` directories whose process is gone (a SIGKILLed role's item files)."""
    removed = []
    for path in root.glob(f"{prefix}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def main(argv: list[str]) -> int:
    """`python services/core/lifeline.py ARGV...` (by path: this module imports the standard library only): arm the
    parent-death signal, then exec ARGV (for roles that are not `batchmesh` commands, like rq's worker). The signal
    survives exec; its default action ends the process; core.command handles it once the role runs a command."""
    if not argv:
        sys.stderr.write("usage: python services/core/lifeline.py ARGV...\n")
        return 2
    arm_parent_death()
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - argv as given, never through a shell
    except OSError as exc:
        sys.stderr.write(f"cannot run {argv[0]!r}: {os.strerror(exc.errno or errno.ENOENT)}\n")
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
