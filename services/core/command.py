"""Run a worker command on one item, per the worker contract: the item as JSON in a private file named by
WORK_ITEM_FILE, outputs in WORK_OUTPUT_DIR, the result JSON on stdout or in $WORK_OUTPUT_DIR/result.json.
Exit 0 = done, anything else (or the timeout) = failed. argv only: item data never meets a shell."""

from __future__ import annotations

import atexit
import errno
import functools
import itertools
import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import lifeline, strict_json
from .item import WorkItem, encode_json
from .masking import command_env

STDERR_TAIL = 2000
STDERR_LINES = 20  # of a successful command's stderr, kept in the role log
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: dict[str, Any] | None = None
    reason: str = ""


def failure_reason(exc: BaseException) -> str:
    """An item's failure reason for an exception raised while running it: "TypeName: message"."""
    return f"{type(exc).__name__}: {exc}"


def item_document(item: WorkItem) -> bytes:
    """What the worker reads from WORK_ITEM_FILE."""
    return encode_json({"id": item.id, "name": item.id, "data": item.data, "version": item.version,
                        "batch": item.batch, "attempt": item.attempts + 1})


def read_result(stdout: bytes, output_dir: Path | str) -> dict[str, Any]:
    """result.json wins over stdout; non-JSON stdout is kept as text; nothing at all is an empty result.
    NaN/Infinity in the result become the strings "NaN"/"Infinity"/"-Infinity" (core.strict_json's rule)."""
    try:  # one open, not a stat and then an open
        with open(os.path.join(output_dir, "result.json"), "rb") as f:
            text = f.read()
    except (FileNotFoundError, NotADirectoryError):
        text = stdout.strip()
    if not text:
        return {}
    try:
        value = strict_json.loads_foreign(text)
    except ValueError:
        return {"stdout": text.decode(errors="replace")[-STDERR_TAIL:]}
    return value if isinstance(value, dict) else {"result": value}


@dataclass(frozen=True)
class Prepared:
    """An item made ready for its command (before the command starts: the process executor prepares the next
    item while the current one runs): WORK_OUTPUT_DIR made and rid of an earlier attempt's result.json, the item
    in its private WORK_ITEM_FILE, the child's environment (core.masking.command_env plus the stage's env)."""

    item: WorkItem
    output_dir: Path | str
    item_file: str
    env: dict[str, str]

    def discard(self) -> None:
        """Remove the item file (the command ran, or will not)."""
        try:
            os.unlink(self.item_file)
        except FileNotFoundError:
            pass


def prepare(item: WorkItem, output_dir: Path | str, env: dict[str, str] | None = None, *,
            base: dict[str, str] | None = None) -> Prepared:
    """Write what the command of `item` reads. `base`: the environment to add `env` to, when the caller keeps
    command_env() (it is the same for every item of a stage). Raises OSError when the output dir or the item file
    cannot be made. Plain os calls on str paths: the process executor prepares every item with this."""
    out = os.fspath(output_dir)
    try:
        os.mkdir(out)  # made now: no earlier attempt left a result in it
    except FileExistsError:  # an earlier attempt's dir: its stale result.json must not count
        try:
            os.unlink(os.path.join(out, "result.json"))
        except FileNotFoundError:
            pass
    except FileNotFoundError:  # its parents first
        os.makedirs(out, exist_ok=True)
    item_file = _write_item_file(item)
    return Prepared(item, output_dir, item_file, {**(command_env() if base is None else base), **(env or {}),
                                                  "WORK_ITEM_FILE": item_file, "WORK_OUTPUT_DIR": out})


def _spawn(argv: list[str], prepared: Prepared) -> subprocess.Popen[bytes]:
    """Start the command in its own session (its own process group: killed as a whole when the item ends), stdin
    from /dev/null, stdout and stderr piped. Raises OSError when it cannot be started."""
    proc = subprocess.Popen(argv, env=prepared.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    with _running_lock:
        _running.add(proc.pid)
    return proc


def _cannot_start(argv: list[str], exc: OSError) -> Outcome:
    return Outcome(False, reason=f"cannot start {argv[0]!r}: {exc.strerror or exc}")


def run_command(
    argv: list[str], item: WorkItem, output_dir: Path, *, timeout: float, env: dict[str, str] | None = None
) -> Outcome:
    """Run `argv` for `item`. The output dir is derived from the item, so a retry overwrites, never duplicates."""
    prepared = prepare(item, output_dir, env)
    try:
        try:
            proc = _spawn(argv, prepared)
        except OSError as exc:
            return _cannot_start(argv, exc)
        try:
            output = _communicate(proc, timeout)
        finally:
            if proc.returncode is None:  # timed out, or interrupted: its group and descendants go, then it is reaped
                lifeline.kill_tree(proc.pid)
                proc.communicate()
            with _running_lock:
                _running.discard(proc.pid)
        if output is None:
            return Outcome(False, reason=f"timed out after {timeout:g}s")
    finally:
        prepared.discard()
    return _outcome(argv, item, output_dir, proc.returncode, *output)


def _outcome(argv: list[str], item: WorkItem, output_dir: Path, returncode: int, stdout: bytes,
             stderr: bytes) -> Outcome:
    if returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
        return Outcome(False, reason=f"exit code {returncode}: {tail}" if tail else f"exit code {returncode}")
    if stderr.strip():  # a successful worker's warnings are kept too (the role log; `batchmesh run -v` shows them)
        log.info("worker stderr", extra={"event": "worker.stderr", "item": item.id, "command": argv[0],
                                         "stderr": stderr_tail(stderr)})
    return Outcome(True, result=read_result(stdout, output_dir))


class Child:
    """A command started for one prepared item whose pipes and exit (a pidfd) the caller watches in its own
    selector, beside other children: `fds` to register, `feed(fd)` when one is readable (True: that fd is done,
    unregister it), `outcome()` once `finished` (or at `deadline`: then it is killed). What run_command does,
    without a thread per command, started with posix_spawn (vfork + exec in libc: no page tables copied; the same
    child as run_command's: its own session, stdin /dev/null, stdout/stderr piped, SIGPIPE and SIGXFSZ back to
    their defaults, argv[0] looked up in the child env's PATH). Linux >= 5.3 (pidfd_open); raises OSError when
    the command cannot be started."""

    def __init__(self, argv: list[str], prepared: Prepared, timeout: float) -> None:
        self.argv, self.prepared, self.timeout = argv, prepared, timeout
        self.deadline = time.monotonic() + timeout
        self.returncode: int | None = None
        self.started = time.perf_counter()
        self.exited = 0.0  # perf_counter() when its exit was seen (0: not yet)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = os.posix_spawn(_executable(argv[0], prepared.env.get("PATH")), argv, prepared.env,
                                      file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                                                    (os.POSIX_SPAWN_DUP2, err_w, 2)],
                                      setsid=True, setsigdef=_DEFAULT_SIGNALS)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        with _running_lock:
            _running.add(self.pid)
        self.chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            self._reap(kill=True)
            raise
        self.open = {*self.chunks, self.pidfd}

    @property
    def fds(self) -> tuple[int, ...]:
        return (*self.chunks, self.pidfd)

    @property
    def finished(self) -> bool:
        return not self.open

    def feed(self, fd: int) -> bool:
        """Read what `fd` has; True once it is at its end (EOF, or the process exited)."""
        data = os.read(fd, 65536) if fd != self.pidfd else b""
        if data:
            self.chunks[fd].append(data)
            return False
        self.open.discard(fd)
        if fd == self.pidfd:  # what it left in its group ends now (and lets go of the pipes)
            self.exited = time.perf_counter()
            lifeline.kill_group(self.pid)
        return True

    def outcome(self) -> Outcome:
        """The item's outcome: call once `finished`, or to end it (a timeout: its group and descendants killed)."""
        timed_out = not self.finished
        self._reap(kill=timed_out)
        os.close(self.pidfd)
        if timed_out:
            return Outcome(False, reason=f"timed out after {self.timeout:g}s")
        stdout, stderr = (b"".join(c) for c in self.chunks.values())
        assert self.returncode is not None
        return _outcome(self.argv, self.prepared.item, self.prepared.output_dir, self.returncode, stdout, stderr)

    def _reap(self, *, kill: bool) -> None:
        try:
            if kill:  # its group and descendants go, then it is reaped
                lifeline.kill_tree(self.pid)
            # it has exited (and its group was killed then, before this reap: the id could not be reused)
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        finally:
            for fd in self.chunks:
                os.close(fd)
            with _running_lock:
                _running.discard(self.pid)
            self.prepared.discard()


def stderr_tail(stderr: bytes) -> str:
    """The last STDERR_LINES lines (at most STDERR_TAIL characters) of a command's stderr."""
    lines = stderr.decode(errors="replace").rstrip().splitlines()[-STDERR_LINES:]
    return "\n".join(lines)[-STDERR_TAIL:]


_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))


@functools.lru_cache(maxsize=64)
def _executable(name: str, path: str | None) -> str:
    """argv[0] as subprocess finds it: as is when it holds a '/', else in the child env's PATH (os.defpath if
    unset). FileNotFoundError when it is nowhere."""
    if "/" in name:
        return name
    for directory in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


# Item files live in one private directory (mode 0700) per process, one file (mode 0600) per run: a directory per
# item costs a mkdir and an rmdir each, which on some filesystems is more than the fork+exec of a small command.
# Keyed by pid, so a forked child (an rq work horse) makes its own; each is removed when its process exits.
# Named batchmesh-items-<pid>-*: the local runner removes those of processes that died without cleaning up (SIGKILL).
ITEM_DIR_PREFIX = "batchmesh-items-"
_item_dirs: dict[int, Path] = {}
_item_dirs_lock = threading.Lock()
_item_names = itertools.count()
_running: set[int] = set()  # process groups of the commands running now (each command leads its own)
_running_lock = threading.RLock()  # re-entrant: the parent-death handler may interrupt a holder


def _item_dir(fresh: bool = False) -> Path:
    pid = os.getpid()
    with _item_dirs_lock:
        if fresh or pid not in _item_dirs:
            if not _item_dirs:
                lifeline.guard(_orphaned)  # dying with the runner kills the running commands, removes the files
            path = _item_dirs[pid] = Path(tempfile.mkdtemp(prefix=f"{ITEM_DIR_PREFIX}{pid}-"))
            atexit.register(lambda: os.getpid() == pid and shutil.rmtree(path, ignore_errors=True))
            atexit.register(stop_all)
        return _item_dirs[pid]


def _orphaned() -> None:
    """The runner is gone (so nobody else will sweep): also remove the item dirs of processes that died with us
    (the one-shot workers of the process executor's chains)."""
    stop_all()
    lifeline.sweep_dirs(Path(tempfile.gettempdir()), ITEM_DIR_PREFIX)


def stop_all() -> None:
    """Kill the process group of every command running in this process and remove its item files (at exit, and
    when the runner that started this role dies). The items themselves stay pending and are retried elsewhere."""
    with _running_lock:
        groups = list(_running)
    for pid in groups:
        lifeline.kill_tree(pid)  # its group, and descendants that left it (while it lives, they are found)
    path = _item_dirs.get(os.getpid())
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _write_item_file(item: WorkItem) -> str:
    document = item_document(item)
    for fresh in (False, True):  # a tmp cleaner may have removed the directory under a long-running process
        path = f"{_item_dir(fresh)}/{next(_item_names)}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            if fresh:
                raise
            continue
        try:  # os.write, not a file object: no fstat, no buffer
            view = memoryview(document)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return path
    raise AssertionError("unreachable")


def _communicate(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes] | None:
    """Popen.communicate(timeout=...) without its polling: once the pipes close, Popen.wait(timeout) sleeps in
    growing steps (0.5 ms, 1 ms, 2 ms...) until the exit shows, as long as a small command itself takes. Here the
    pipes and a pidfd are watched together, so the exit is seen when it happens. None on timeout."""
    assert proc.stdout is not None and proc.stderr is not None
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the standard library's way
        try:
            output = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        lifeline.kill_group(proc.pid)  # leftovers of its group (reaped already: a reused id is very unlikely)
        return output
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    try:
        with selectors.DefaultSelector() as selector:
            for fd in (*chunks, pidfd):
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                for key, _ in selector.select(remaining):
                    data = os.read(key.fd, 65536) if key.fd != pidfd else b""
                    if data:
                        chunks[key.fd].append(data)
                    else:  # EOF, or the process exited
                        selector.unregister(key.fd)
                        if key.fd == pidfd:  # what it left in its group ends now (and lets go of the pipes)
                            lifeline.kill_group(proc.pid)
    finally:
        os.close(pidfd)
    proc.wait()  # it has exited (and its group was killed then, before this reap: the id could not be reused)
    stdout, stderr = (b"".join(c) for c in chunks.values())
    proc.stdout.close()
    proc.stderr.close()
    return stdout, stderr
