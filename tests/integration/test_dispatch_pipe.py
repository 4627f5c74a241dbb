"""The pipelined dispatch (manager.script_pipe, issue 12 first pass): a page's script calls are sent without waiting
for each reply. Each item is still dispatched exactly once and in listing order; a connection lost mid-page re-runs
the calls not yet answered (the script re-checks, so none is dispatched twice); an item the model takes but UTF-8
cannot hold is counted invalid instead of raising."""

from __future__ import annotations

import json

import pytest
import redis

from services.core.keys import Keys
from services.core.progress import Progress
from services.manager import diff
from services.manager.script_pipe import ScriptPipe


def _dispatcher(client: redis.Redis, keys: Keys) -> diff.Dispatcher:
    return diff.Dispatcher(client, keys, Progress(client, keys), batch="b")


def _stream_ids(client: redis.Redis, keys: Keys) -> list[str]:
    return [json.loads(fields[b"item"])["id"] for _, fields in client.xrange(keys.stream("source"))]


def test_a_page_of_many_calls_dispatches_each_item_once_in_listing_order(client: redis.Redis,
                                                                         pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    n = diff.FIRST_CHUNK + 3 * diff.SCRIPT_CHUNK + 7  # several calls, the last one short
    page = [{"name": f"i-{i}", "version": "1"} for i in range(n)]
    stats = _dispatcher(client, keys).dispatch(page)
    assert (stats.new, stats.known, stats.busy, stats.invalid) == (n, 0, 0, 0)
    assert _stream_ids(client, keys) == [item["name"] for item in page]
    assert Progress(client, keys).counts()["queued"] == n
    assert int(client.hget(keys.arrivals(), keys.stream("source"))) == n
    assert client.scard(keys.batch_items("b")) == n


def test_an_item_utf8_cannot_hold_is_counted_invalid_not_raised(client: redis.Redis, pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    stats = _dispatcher(client, keys).dispatch([{"name": "a", "x": "\udc80"}, {"name": "b"}])
    assert (stats.new, stats.invalid) == (1, 1)
    assert _stream_ids(client, keys) == ["b"]


def test_a_connection_lost_mid_page_reruns_the_unanswered_calls_once(client: redis.Redis, pipeline_name: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    kills: list[int] = []
    pipes: list[ScriptPipe] = []
    named = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "client_name": pipeline_name}))

    class KilledAfterTwoCalls(ScriptPipe):
        def send(self, args: list) -> None:  # type: ignore[override]
            super().send(args)
            pipes.append(self)
            if len(self._sent) == 2 and not kills:  # two calls written: kill the connection under the pipe
                for other in client.client_list():
                    if other.get("name") == pipeline_name:
                        kills.append(client.client_kill_filter(_id=other["id"]))

    monkeypatch.setattr(diff, "ScriptPipe", KilledAfterTwoCalls)
    keys = Keys(pipeline_name)
    n = diff.FIRST_CHUNK + 4 * diff.SCRIPT_CHUNK
    page = [{"name": f"i-{i}", "version": "1"} for i in range(n)]
    try:
        stats = _dispatcher(named, keys).dispatch(page)
    finally:
        named.close()
        named.connection_pool.disconnect()
    assert kills == [1] and pipes[-1]._lost  # the pipe saw its connection go and fell back to the client
    ids = _stream_ids(client, keys)
    assert sorted(ids) == sorted(item["name"] for item in page)  # each once, none lost
    assert stats.new + stats.known == n and stats.invalid == 0
    assert Progress(client, keys).counts()["queued"] == n
    assert _dispatcher(client, keys).dispatch(page).new == 0
