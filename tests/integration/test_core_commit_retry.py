"""A commit is never sent twice: a client that retries after a connection error would re-send a transaction whose
reply was lost and publish its outputs twice. Shown through a proxy that drops the reply to an EXEC."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.core import Keys, Settings, StreamConsumer, WorkItem
from services.core.stage import Commit


class ReplyDroppingProxy:
    """TCP proxy to Redis; when armed, the reply to the next EXEC is swallowed and the connection cut."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.armed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            state = {"exec": False}
            for src, dst, up in ((downstream, upstream, True), (upstream, downstream, False)):
                threading.Thread(target=self._pump, args=(src, dst, state, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict[str, bool], up: bool) -> None:
        try:
            while data := src.recv(65536):
                state["exec"] = state["exec"] or (up and b"EXEC\r\n" in data.upper())
                if not up and state["exec"] and self.armed:
                    self.armed = False
                    time.sleep(0.05)  # the whole transaction has run; now its reply is lost
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[ReplyDroppingProxy]:
    port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    p = ReplyDroppingProxy(int(port))
    yield p
    p.server.close()


def test_a_retrying_client_would_commit_twice(proxy: ReplyDroppingProxy, client: redis.Redis) -> None:
    """Why core refuses retrying clients: redis-py re-sends the whole MULTI/EXEC."""
    retrying = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 2))
    key = f"t-{time.monotonic_ns()}"
    proxy.armed = True
    pipe = retrying.pipeline(transaction=True)
    pipe.xadd(key, {"a": "1"})
    pipe.execute()
    assert client.xlen(key) == 2


def test_a_stage_consumer_refuses_a_retrying_client(proxy: ReplyDroppingProxy, settings: Settings) -> None:
    with pytest.raises(ValueError, match="retries"):
        StreamConsumer(redis.Redis(port=proxy.port), settings, stage="work", input_stream="in")


def test_a_lost_commit_reply_raises_and_commits_exactly_once(
    proxy: ReplyDroppingProxy, client: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.pipeline)
    c = StreamConsumer(redis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0"), settings, stage="work",
                       input_stream="in", consumer="c1")
    client.xadd(keys.stream("in"), WorkItem(id="a").encode())
    (d,) = c.read()
    commit = Commit()
    commit.complete(d, ("out", WorkItem(id="a")))
    proxy.armed = True
    with pytest.raises(redis.ConnectionError):
        c.commit(commit)
    assert client.xlen(keys.stream("out")) == 1
    assert client.xpending(keys.stream("in"), "work")["pending"] == 0
