"""The embedded Redis as several batchmesh processes share it (core.redis_lease): processes racing to start it on
one data directory start one redis-server; it outlives every user, however they end (SIGKILL included), and stops
after the last; a command waits until Redis has loaded its append-only file; a Redis state is one line, never a
traceback. Real processes, real redis-servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from services.core import EmbeddedRedis
from services.core.embedded import RedisStateError, wait_loaded

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.one_backend

# A user: waits for the start signal, takes the shared server, reports the server's pid, holds it, leaves.
USER = """
import json, os, sys, time
from pathlib import Path
import redis
from services.core import redis_url
data, go, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
with redis_url(None, data) as url:
    client = redis.Redis.from_url(url)
    client.incr("users")
    print(json.dumps({"url": url, "pid": client.info("server")["process_id"]}), flush=True)
    time.sleep(hold)
    client.incr("left")
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _redis_servers(data: Path) -> list[int]:
    """Live redis-server processes on this data directory's files."""
    found = []
    for proc in Path("/proc").iterdir():
        try:  # redis-server rewrites its argv ("redis-server host:port") and runs in its --dir
            cmdline, cwd = (proc / "cmdline").read_bytes(), os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"redis-server" in cmdline and cwd == str(data.resolve()) and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _users(data: Path, go: Path, holds: list[float]) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [subprocess.Popen([sys.executable, "-c", USER, str(data), str(go), str(hold)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for hold in holds]


def _wait(what: str, check, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_users_racing_on_one_data_dir_share_one_server_stopped_after_the_last(tmp_path: Path) -> None:
    data, go = tmp_path / "redis", tmp_path / "go"
    users = _users(data, go, [0.3 + 0.1 * i for i in range(8)])
    for user in users:  # every interpreter up and polling: they start within a millisecond of each other
        assert user.stdout is not None and user.stdout.readline().strip() == "ready"
    go.touch()
    while any(u.poll() is None for u in users):  # sample: never two redis-servers on the same files at once
        assert len(_redis_servers(data)) <= 1
        time.sleep(0.01)
    reports = []
    for user in users:
        out, err = user.communicate()
        assert user.returncode == 0, err[-2000:]
        reports.append(json.loads(out))
    assert len({r["url"] for r in reports}) == 1 and len({r["pid"] for r in reports}) == 1
    starts = (data / "redis.log").read_text().count("Redis is starting")  # every redis-server start says it
    assert starts == 1, f"one redis-server ever ran on these files, not {starts}"
    assert not _alive(reports[0]["pid"]), "stopped once the last user left (the last user waits for it)"
    assert not (data / "redis.url").exists()
    # Every user's writes survived the shared server's shutdown (the AOF was flushed by SHUTDOWN).
    server = EmbeddedRedis(data)
    client = redis.Redis.from_url(server.start())
    try:
        assert int(client.get("users") or 0) == 8 and int(client.get("left") or 0) == 8
    finally:
        server.stop()


def test_a_sigkilled_user_neither_stops_the_server_under_others_nor_keeps_it_alive(tmp_path: Path) -> None:
    data, go = tmp_path / "redis", tmp_path / "go"
    go.touch()
    starter, other = _users(data, go, [30, 2.5])
    assert starter.stdout is not None
    assert starter.stdout.readline().strip() == "ready"
    first = json.loads(starter.stdout.readline())  # the starter started the server (it came first)
    assert other.stdout is not None
    assert other.stdout.readline().strip() == "ready"
    assert json.loads(other.stdout.readline())["pid"] == first["pid"]
    starter.send_signal(signal.SIGKILL)  # the user that started the server dies without a word
    starter.wait()
    out, err = other.communicate(timeout=15)  # the other one carries on and leaves normally
    assert other.returncode == 0, err[-2000:]
    assert not _alive(first["pid"]), "the last (living) user out: the server stops"

    lone = _users(data, go, [30])[0]  # a lone user SIGKILLed: the server does not outlive it for ever
    assert lone.stdout is not None and lone.stdout.readline().strip() == "ready"
    pid = json.loads(lone.stdout.readline())["pid"]
    lone.send_signal(signal.SIGKILL)
    lone.wait()
    _wait("the server of a SIGKILLed last user to stop", lambda: not _alive(pid), timeout_s=10)
    assert not (data / "redis.url").exists() and not _redis_servers(data)


def _keeper_pid(data: Path) -> int:
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"services.core.redis_lease" in argv and str(data.resolve()).encode() in argv:
            return int(proc.name)
    return 0


def test_a_sigkilled_keeper_takes_its_server_along_and_the_next_user_restarts_it_on_the_same_port(
        tmp_path: Path) -> None:
    data, go = tmp_path / "redis", tmp_path / "go"
    go.touch()
    holder = _users(data, go, [30])[0]
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    first = json.loads(holder.stdout.readline())
    try:
        keeper = _keeper_pid(data)
        assert keeper
        os.kill(keeper, signal.SIGKILL)
        _wait("the server to follow its keeper (PR_SET_PDEATHSIG)", lambda: not _alive(first["pid"]), timeout_s=10)
        later = _users(data, go, [0.5])[0]
        out, err = later.communicate(timeout=30)
        assert later.returncode == 0, err[-2000:]
        report = json.loads(out.splitlines()[-1])
        assert report["url"] == first["url"] and report["pid"] != first["pid"], "a new server on the same port"
        assert _redis_servers(data) == [report["pid"]], "the holder still uses it: it stays"
        assert redis.Redis.from_url(first["url"]).info("server")["process_id"] == report["pid"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _wait("the server to stop after its last user", lambda: not _redis_servers(data), timeout_s=10)


def test_a_connection_error_in_the_body_is_the_bodys(tmp_path: Path) -> None:
    """The `generator didn't stop after throw()` bug: an error raised inside `with redis_url(...)` propagates
    as it is; no second server is started for it."""
    from services.core import redis_url

    data = tmp_path / "redis"
    with redis_url(None, data) as url:  # the server runs: the inner user attaches to it
        pid = redis.Redis.from_url(url).info("server")["process_id"]
        with pytest.raises(redis.ConnectionError, match="from the body"), redis_url(None, data) as again:
            assert again == url
            raise redis.ConnectionError("from the body")
        assert redis.Redis.from_url(url).info("server")["process_id"] == pid, "still the one server"
        assert _redis_servers(data) == [pid]
    assert not _alive(pid) and not _redis_servers(data)


def _big_aof(data: Path, entries: int = 300_000) -> None:
    """An append-only file of `entries` XADDs (written directly: filling it over a socket takes far longer)."""
    data.mkdir(parents=True)
    command = b"*5\r\n$4\r\nXADD\r\n$3\r\nbig\r\n$1\r\n*\r\n$1\r\nf\r\n$20\r\n" + b"x" * 20 + b"\r\n"
    (data / "appendonly.aof").write_bytes(command * entries)


def test_commands_wait_until_redis_has_loaded_its_aof(tmp_path: Path) -> None:
    """`batchmesh status` / `dlq list` right after the embedded Redis starts on a large AOF: they wait for
    `loading:0` instead of crashing with BusyLoadingError."""
    state = tmp_path / "state"
    _big_aof(state / "redis")
    spec = ROOT / "examples" / "wordcount" / "pipeline.yaml"
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(state), "BATCHMESH_LOG_LEVEL": "INFO"}
    env.pop("REDIS_URL", None)
    commands = {argv[0]: subprocess.Popen([sys.executable, "-m", "services.cli", *argv], cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for argv in (["status", str(spec)], ["dlq", "list", str(spec)])}  # at once: one Redis, one load
    seen = []
    for name, command in commands.items():
        out, err = command.communicate(timeout=60)
        assert command.returncode == 0 and "Traceback" not in err, err[-2000:]
        seen.append("redis is loading its dataset; waiting" in err)
        if name == "status":
            assert "stages" in json.loads(out)
    assert any(seen), "the AOF is big enough to be seen loading"
    assert not _redis_servers(state / "redis"), "Redis stopped after the last of them"


def test_a_load_that_never_ends_is_a_clear_error(tmp_path: Path) -> None:
    _big_aof(tmp_path / "redis")
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start(wait_loading=False)
    try:
        client = redis.Redis.from_url(url)
        assert int(client.info("persistence")["loading"]) == 1
        with pytest.raises(redis.BusyLoadingError):
            client.xlen("big")  # what status, dlq list and dlq replay met
        with pytest.raises(RedisStateError, match="still loading its dataset after 0.1s"):
            wait_loaded(client, url, timeout_s=0.1)
        wait_loaded(client, url)
        assert client.xlen("big") == 300_000
    finally:
        server.stop()


@pytest.mark.parametrize(("redis_url_env", "code", "says"), [
    ("redis://127.0.0.1:1/0", 1, "Redis unreachable at redis://127.0.0.1:1/0"),
    ("http://nowhere:6379", 2, "is not a Redis URL"),
    ("redis://:s3cret@127.0.0.1:1/0", 1, "redis://:***@127.0.0.1:1/0"),
])
def test_a_redis_state_is_one_line_not_a_traceback(tmp_path: Path, redis_url_env: str, code: int,
                                                   says: str) -> None:
    spec = ROOT / "examples" / "wordcount" / "pipeline.yaml"
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp_path / "state"), "REDIS_URL": redis_url_env}
    for argv in (["status", str(spec)], ["dlq", "replay", str(spec)]):
        done = subprocess.run([sys.executable, "-m", "services.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert "Traceback" not in done.stderr and len(lines) == 1 and says in lines[0], done.stderr
        assert "s3cret" not in done.stderr


def test_a_wrong_password_is_one_line(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    url = server.start()
    try:
        redis.Redis.from_url(url).config_set("requirepass", "right")
        spec = ROOT / "examples" / "wordcount" / "pipeline.yaml"
        env = {**os.environ, "REDIS_URL": url.replace("//", "//:wrong@"), "BATCHMESH_DATA_DIR": str(tmp_path)}
        done = subprocess.run([sys.executable, "-m", "services.cli", "status", str(spec)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "refused the credentials" in done.stderr and "wrong" not in done.stderr.replace("WRONGPASS", "")
    finally:
        redis.Redis.from_url(url, password="right").config_set("requirepass", "")  # noqa: S106 (test server)
        server.stop()


def test_a_server_that_is_not_redis_is_one_line(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_like_http() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1000)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer_like_http, daemon=True).start()
    spec = ROOT / "examples" / "wordcount" / "pipeline.yaml"
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "BATCHMESH_DATA_DIR": str(tmp_path)}
    try:
        done = subprocess.run([sys.executable, "-m", "services.cli", "status", str(spec)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        listener.close()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "does not speak the Redis protocol" in done.stderr and len(done.stderr.strip().splitlines()) == 1
