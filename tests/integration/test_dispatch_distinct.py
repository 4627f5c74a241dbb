"""The dispatch script's per-call rules after issue 12's instruction cuts (manager.diff): the names of one call are
distinct (the Dispatcher splits a chunk where a name repeats, so the script keeps no table of what it sent), and
the batch's item set holds exactly the items a call dispatched, whether it dispatched all of its candidates (the set
then takes the names straight from ARGV) or some of them."""

from __future__ import annotations

import json

import redis

from services.core.keys import Keys
from services.core.progress import Progress
from services.manager import diff


def _dispatcher(client: redis.Redis, keys: Keys) -> diff.Dispatcher:
    return diff.Dispatcher(client, keys, Progress(client, keys), batch="b")


def _stream_ids(client: redis.Redis, keys: Keys) -> list[str]:
    return [json.loads(fields[b"item"])["id"] for _, fields in client.xrange(keys.stream("source"))]


def test_a_name_repeated_inside_one_chunk_goes_out_once(client: redis.Redis, pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    d = _dispatcher(client, keys)
    d._all_new = True  # as in a first pass: no pre-check, every listed item reaches the script
    # after the first calls' ramp (16, 32): the repeats fall inside one chunk of the third call
    fresh = [{"name": f"i-{i}", "version": "1"} for i in range(diff.FIRST_CHUNK * 3)]
    page = [*fresh, {"name": "a", "version": "1"}, {"name": "x", "version": "1"}, {"name": "a", "version": "1"},
            {"name": "a", "version": "2"}, {"name": "x", "version": "1"}]
    stats = d.dispatch(page)
    assert (stats.new, stats.busy, stats.known) == (len(fresh) + 2, 1, 3)  # a again: known; a changed: busy
    assert _stream_ids(client, keys) == [item["name"] for item in fresh] + ["a", "x"]
    assert client.hget(keys.versions(), "a") == b"1"
    assert Progress(client, keys).counts()["queued"] == len(fresh) + 2
    assert client.scard(keys.batch_items("b")) == len(fresh) + 2
    assert int(client.hget(keys.arrivals(), keys.stream("source"))) == len(fresh) + 2


def test_the_batch_set_holds_exactly_what_a_partly_dispatching_call_sent(client: redis.Redis,
                                                                         pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    progress = Progress(client, keys)
    progress.mark(["busy"], "running")
    progress.mark(["settled"], "done")
    client.hset(keys.versions(), mapping={"busy": "1", "settled": "1", "same": "2"})
    progress.mark(["same"], "done")
    d = _dispatcher(client, keys)
    d._all_new = True
    page = [{"name": n, "version": "2"} for n in ("busy", "new-1", "settled", "same", "new-2")]
    stats = d.dispatch(page)
    assert (stats.new, stats.busy, stats.known) == (3, 1, 2)
    assert client.smembers(keys.batch_items("b")) == {b"new-1", b"settled", b"new-2"}
    states = client.hgetall(keys.states())
    assert {k: states[k.encode()] for k in ("busy", "new-1", "settled", "same", "new-2")} == {
        "busy": b"running", "new-1": b"queued", "settled": b"queued", "same": b"done", "new-2": b"queued"}
    assert client.hmget(keys.versions(), ["busy", "new-1", "settled", "same", "new-2"]) == [
        b"1", b"2", b"2", b"2", b"2"]
    # an all-new call (the set from ARGV) in the same batch adds exactly its own names
    assert d.dispatch([{"name": f"n-{i}", "version": "1"} for i in range(3)]).new == 3
    assert client.smembers(keys.batch_items("b")) == {b"new-1", b"settled", b"new-2", b"n-0", b"n-1", b"n-2"}
