"""One embedded redis-server per data directory, shared by every batchmesh process that uses it.

Files in the data directory (all locks are `flock`s, so the kernel drops them when their holder dies, SIGKILL
included):

- `redis.lock`: held exclusively while a process decides whether to start a server or attach to the running one
  (and by the keeper while it stops the server). So two commands started at the same moment never start two
  redis-servers on the same files.
- `redis.lease`: every user holds a *shared* lock on it for as long as it uses the server.
- `redis.keeper`: held exclusively by the keeper, a small process (`python -m services.core.redis_lease DIR`) that
  owns the redis-server child. It waits until no shared lease is left, then takes `redis.lock`, checks once more
  that nobody holds a lease (a user attaching meanwhile would), shuts Redis down (flushing the AOF) and exits.
  The keeper alone stops the server, so a user's end (normal, Ctrl-C or SIGKILL) never stops it under others, and
  a SIGKILLed last user cannot keep it alive: its lease goes with it and the keeper stops the server.
- `redis.url`: the running server's URL (written atomically by the keeper, removed when it stops).
- `redis.pid`: the redis-server's pid, so a server left by a dead keeper is waited for before a new one starts.

If the redis-server dies on its own (SIGKILL, OOM kill), the keeper starts it again on the same port and files.
If the keeper itself is SIGKILLed, its redis-server gets SIGTERM (PR_SET_PDEATHSIG) and shuts down cleanly; the
next user starts a new keeper, on the same port when it is free (roles that hold the old URL reconnect)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from .embedded import EmbeddedRedis, RedisStateError, wait_loaded

log = logging.getLogger(__name__)
LOCK, LEASE, KEEPER, MARKER, PIDFILE = "redis.lock", "redis.lease", "redis.keeper", "redis.url", "redis.pid"
START_TIMEOUT_S = 60.0
LAST_USER_WAIT_S = 30.0  # the last user out waits this long for the keeper to have stopped the server
RESTARTS_BEFORE_GIVING_UP = 5  # failed restarts in a row of a server that died on its own


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # never inherited by a child


def _try_lock(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    fd = _open(data_dir / LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def keeper_alive(data_dir: Path) -> bool:
    fd = _open(data_dir / KEEPER)
    try:
        return not _try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _old_server(data_dir: Path) -> int:
    """The pid of a redis-server still running on this directory's files (left by a dead keeper), or 0."""
    try:
        pid = int((data_dir / PIDFILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # redis-server rewrites it: "redis-server host:port"
        cwd = os.readlink(f"/proc/{pid}/cwd")  # it runs in its --dir
    except (OSError, ValueError):
        return 0
    return pid if b"redis-server" in cmdline and cwd == str(data_dir) and _pid_alive(pid) else 0


def _wait_gone(pid: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _marker_port(data_dir: Path) -> int:
    try:
        return int((data_dir / MARKER).read_text().strip().rsplit(":", 1)[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0


def _attach(data_dir: Path) -> str | None:
    """Under `redis.lock`: the running server's URL, or None if none runs (or its keeper is on its way out)."""
    marker = data_dir / MARKER
    deadline = time.monotonic() + 5
    while marker.exists() and keeper_alive(data_dir):
        url = marker.read_text().strip()
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).info("server")
            return url
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:  # a keeper whose server died and that does not exit: replace it
                return None
            time.sleep(0.05)  # its server died: the keeper is about to exit
    return None


def _start_keeper(data_dir: Path, persist: bool) -> str:
    """Under `redis.lock`, holding a lease: start a keeper (and so a server) and return the server's URL."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(data_dir / "keeper.log", "ab") as errors:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "services.core.redis_lease", str(data_dir), "--port", str(_marker_port(data_dir)),
             *([] if persist else ["--no-persist"])],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=env,
            start_new_session=True)  # Ctrl-C in a terminal does not reach it; it outlives us
    assert keeper.stdout is not None
    with keeper.stdout:
        ready, _, _ = select.select([keeper.stdout], [], [], START_TIMEOUT_S)
        line = keeper.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("ok "):
        if keeper.poll() is None:
            keeper.kill()
        raise RedisStateError(line.removeprefix("error ") if line.startswith("error ") else
                              f"the embedded redis-server did not start; see {data_dir / 'redis.log'} and "
                              f"{data_dir / 'keeper.log'}")
    return line.removeprefix("ok ")


def _wait_if_last(data_dir: Path) -> None:
    """After our lease is gone: if nobody else holds one, wait until the keeper has stopped the server."""
    probe = _open(data_dir / LEASE)
    deadline, held = time.monotonic() + LAST_USER_WAIT_S, 0
    try:
        while time.monotonic() < deadline and keeper_alive(data_dir):
            if _try_lock(probe, fcntl.LOCK_EX):
                fcntl.flock(probe, fcntl.LOCK_UN)
                held = 0
            elif (held := held + 1) >= 5:  # held throughout (the keeper only ever holds it for an instant)
                return  # another user holds a lease: the server stays for them
            time.sleep(0.02)
    finally:
        os.close(probe)


@contextmanager
def shared_server(data_dir: Path, persist: bool = True) -> Iterator[str]:
    """The URL of `data_dir`'s embedded Redis, started if none runs, loaded, ours to use until the block ends."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lease = _open(data_dir / LEASE)
    try:
        with _locked(data_dir):
            fcntl.flock(lease, fcntl.LOCK_SH)  # before any keeper starts: it stops the server once none is left
            url = _attach(data_dir) or _start_keeper(data_dir, persist)
        wait_loaded(redis.Redis.from_url(url), url)
        yield url  # no except around the yield: the body's errors are the body's
    finally:
        os.close(lease)
        _wait_if_last(data_dir)


# -- the keeper ----------------------------------------------------------------------------------------------


def keep(data_dir: Path, persist: bool, port: int) -> int:
    """Start the server, say its URL on stdout, and stop it once no lease is held. Runs in its own process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keeper_fd = _open(data_dir / KEEPER)
    deadline = time.monotonic() + 10
    while not _try_lock(keeper_fd, fcntl.LOCK_EX):  # a keeper whose server died may still be on its way out
        if time.monotonic() > deadline:
            print(f"error another keeper holds {data_dir / KEEPER} and does not exit", flush=True)
            return 1
        time.sleep(0.05)
    if old := _old_server(data_dir):
        _wait_gone(old)  # a dead keeper's server, shutting down on its SIGTERM: never two on the same files
    server = EmbeddedRedis(data_dir, persist=persist)
    try:
        url = server.start(port=port if port else 0, wait_loading=False, die_with_parent=True)
    except RedisStateError as exc:
        print(f"error {exc}", flush=True)
        return 1
    assert server.process is not None
    (data_dir / PIDFILE).write_text(str(server.process.pid))
    marker = data_dir / MARKER
    partial = marker.with_suffix(".tmp")
    partial.write_text(url)
    partial.replace(marker)  # atomic: a reader never sees half a URL
    try:
        print(f"ok {url}", flush=True)
    except BrokenPipeError:  # the starter was interrupted: no lease is left, the loop below stops the server
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    stopping, restarting = threading.Event(), threading.Lock()

    def watch_server() -> None:
        """The server died under us (OOM kill, SIGKILL): start it again on the same port and files, as a
        container's restart policy would, so the roles holding its URL reconnect (core.reconnect) and find what its
        AOF kept. After RESTARTS_BEFORE_GIVING_UP failed starts in a row: leave, so the next user starts anew."""
        failures = 0
        while True:
            server.process.wait()  # type: ignore[union-attr]
            with restarting:
                if stopping.is_set():
                    return
                log.warning("embedded redis exited on its own; restarting it", extra={
                    "event": "redis.died", "code": server.process.returncode})  # type: ignore[union-attr]
                time.sleep(min(5.0, 0.1 * 2 ** failures))
                try:
                    new_url = server.start(port=server.port, wait_loading=False, die_with_parent=True)
                except RedisStateError:
                    failures += 1
                    if failures >= RESTARTS_BEFORE_GIVING_UP:
                        marker.unlink(missing_ok=True)
                        os._exit(1)
                    continue
                failures = 0
                (data_dir / PIDFILE).write_text(str(server.process.pid))  # type: ignore[union-attr]
                if new_url != url:  # the port was taken meanwhile: new users find the new one
                    partial.write_text(new_url)
                    partial.replace(marker)

    threading.Thread(target=watch_server, daemon=True).start()
    lease = _open(data_dir / LEASE)
    while True:
        fcntl.flock(lease, fcntl.LOCK_EX)  # granted once every user's shared lease is gone
        fcntl.flock(lease, fcntl.LOCK_UN)  # (released before taking redis.lock: a user holding it may want a lease)
        with _locked(data_dir):
            if _try_lock(lease, fcntl.LOCK_EX):  # nobody attached meanwhile, and nobody can now
                fcntl.flock(lease, fcntl.LOCK_UN)  # a last user's probe (_wait_if_last) must not take us for a user
                with restarting:
                    stopping.set()
                server.stop()
                marker.unlink(missing_ok=True)
                (data_dir / PIDFILE).unlink(missing_ok=True)
                os.close(keeper_fd)  # released before redis.lock: whoever comes next sees no keeper
                return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.core.redis_lease")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-persist", dest="persist", action="store_false")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return keep(args.data_dir.resolve(), args.persist, args.port)


if __name__ == "__main__":
    sys.exit(main())
