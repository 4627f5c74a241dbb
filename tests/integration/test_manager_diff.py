"""The manager's diff and loop against real Redis and the real source ambassador (a stand-in HTTP server only
if services.source cannot be imported): second passes dispatch nothing, changed versions are work again,
new files are picked up while it runs, counts stay exact, memory stays bounded by a page."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.core import Keys, Progress, Settings, WorkItem
from services.core.spec import Pipeline
from services.manager import batch_done, run_manager, status
from services.manager.diff import Dispatcher
from services.manager.lister import SourceError, list_source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def make_pipeline(name: str, source_dir: Path, **work: Any) -> Pipeline:
    spec = {"input": "source", "command": ["echo", '{"ok": true}'], **work}
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name,
                                    "source": {"path": str(source_dir), "poll": 0.2},
                                    "stages": {"work": {"work": spec}}})


def pages(url: str, size: int = 10) -> list[list[dict[str, Any]]]:
    return list(list_source(url, page_size=size))


def dispatch_all(dispatcher: Dispatcher, url: str) -> tuple[int, int, int]:
    new = known = listed = 0
    for page in list_source(url, page_size=10):
        stats = dispatcher.dispatch(page)
        new, known, listed = new + stats.new, known + stats.known, listed + stats.listed
    return listed, new, known


def assert_counts_exact(client: redis.Redis, keys: Keys) -> None:
    states = [v.decode() for v in client.hvals(keys.states())]
    counts = Progress(client, keys).counts()
    assert {s: n for s, n in counts.items() if n} == {s: states.count(s) for s in set(states)}


def test_lister_walks_every_page_and_rejects_non_v1(source_url: str) -> None:
    got = pages(source_url, size=10)
    assert [len(p) for p in got] == [10, 10, 5]
    assert {"name", "version", "uri"} <= set(got[0][0])
    with pytest.raises(SourceError, match="404"):
        list(list_source(source_url + "/nowhere"))
    html = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html>")))
    with pytest.raises(SourceError, match="not a v1 ItemList"):
        list(list_source("http://source", client=html))


def test_second_pass_dispatches_nothing_and_changed_files_are_work_again(
        client: redis.Redis, pipeline_name: str, source_url: str, source_dir: Path) -> None:
    keys = Keys(pipeline_name)
    progress = Progress(client, keys)
    dispatcher = Dispatcher(client, keys, progress, batch="b1")
    assert dispatch_all(dispatcher, source_url) == (25, 25, 0)
    assert dispatch_all(dispatcher, source_url) == (25, 0, 25)
    assert client.xlen(keys.stream("source")) == 25
    entry = WorkItem.decode(client.xrange(keys.stream("source"), count=1)[0][1])
    assert entry.id == "f000.txt" and entry.batch == "b1" and entry.version and entry.data["name"] == "f000.txt"

    # Changed while queued: not re-dispatched (still in flight) ...
    (source_dir / "f001.txt").write_text("changed, longer content")
    assert dispatch_all(dispatcher, source_url) == (25, 0, 25)
    # ... but once it has settled, the change is work again — and done/dead items stay done otherwise.
    progress.mark([f"f{i:03d}.txt" for i in range(25)], "done")
    progress.mark(["f002.txt"], "dead", force=True)
    assert dispatch_all(dispatcher, source_url) == (25, 1, 24)
    assert progress.state_of("f001.txt") == "queued" and progress.state_of("f002.txt") == "dead"
    assert client.xlen(keys.stream("source")) == 26
    assert progress.counts() == {"queued": 1, "running": 0, "done": 23, "failed": 0, "dead": 1}
    assert_counts_exact(client, keys)


def test_two_managers_racing_dispatch_each_item_once(client: redis.Redis, pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    page = [{"name": f"n{i}", "version": "1"} for i in range(2000)]
    barrier = threading.Barrier(4)
    totals: list[int] = []

    def one() -> None:
        d = Dispatcher(redis.Redis(connection_pool=client.connection_pool), keys, Progress(client, keys), batch="b")
        barrier.wait()
        totals.append(sum(d.dispatch(page[i:i + 100]).new for i in range(0, 2000, 100)))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(totals) == 2000 and client.xlen(keys.stream("source")) == 2000
    assert Progress(client, keys).counts()["queued"] == 2000
    assert_counts_exact(client, keys)


def test_invalid_entries_are_counted_not_dispatched(client: redis.Redis, pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    stats = Dispatcher(client, keys, Progress(client, keys), batch="b").dispatch(
        [{"name": "ok", "version": None}, {"size": 3}, {"name": "x" * 2000, "version": "1"}])
    assert (stats.listed, stats.new, stats.invalid) == (3, 1, 2)


def test_memory_stays_bounded_by_a_page(client: redis.Redis, pipeline_name: str) -> None:
    """No set of every name is kept: Python's peak is the same for 5 pages as for 40."""
    keys = Keys(pipeline_name)
    dispatcher = Dispatcher(client, keys, Progress(client, keys), batch="b")

    def peak(first: int, n_pages: int) -> int:
        tracemalloc.start()
        for p in range(first, first + n_pages):
            dispatcher.dispatch([{"name": f"item-{p}-{i}", "version": "1", "size": i} for i in range(500)])
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(0, 5), peak(5, 40)
    assert large < small * 1.5 + 200_000, (small, large)
    assert client.hlen(keys.versions()) == 45 * 500


def test_manager_picks_up_new_files_serves_status_and_finishes_the_batch(
        settings: Settings, client: redis.Redis, source_url: str, source_dir: Path) -> None:
    pipeline = make_pipeline(settings.pipeline, source_dir, executor="process", concurrency=4)
    settings = settings.model_copy(update={"out_dir": source_dir.parent / "out"})
    stop, port = threading.Event(), free_port()
    thread = threading.Thread(target=run_manager, args=(pipeline, settings, source_url, stop),
                              kwargs={"port": port}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: batch_done(client, pipeline))
        assert status(client, pipeline)["counts"]["done"] == 25
        first = status(client, pipeline)["batch"]["id"]
        for i in range(25, 30):  # arriving while the manager runs: the listing that finds them is a new batch
            (source_dir / f"f{i:03d}.txt").write_text(f"late {i}")
        wait_for(lambda: status(client, pipeline)["counts"]["done"] == 30)
        wait_for(lambda: batch_done(client, pipeline))

        snap = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=5).json()
        assert snap["pipeline"] == pipeline.name
        assert snap["batch"]["complete"] is True and snap["batch"]["listed"] == 30 and snap["batch"]["new"] == 5
        assert snap["batch"]["id"] != first
        assert client.smembers(Keys(pipeline.name).batch_items(snap["batch"]["id"])) == {
            f"f{i:03d}.txt".encode() for i in range(25, 30)}
        assert snap["counts"] == {"listed": 30, "queued": 0, "running": 0, "done": 30, "failed": 0, "dead": 0}
        assert snap["skipped"] == 25
        work = snap["stages"]["work"]
        assert work["executor"] == "process" and work["out"] == 30 and work["backlog"] == 0
        assert {"failed", "dead", "lag", "pending", "length"} <= set(work)
        assert json.loads(client.hget(Keys(pipeline.name).results(), "f029.txt")) == {"ok": True}
        wait_for(lambda: f'batchmesh_batch_items{{pipeline="{pipeline.name}",state="done"}} 30.0' in
                 httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_batch_done_waits_for_the_listing_and_for_items_in_flight(client: redis.Redis, pipeline_name: str,
                                                                  tmp_path: Path) -> None:
    pipeline = make_pipeline(pipeline_name, tmp_path)
    keys = Keys(pipeline_name)
    assert not batch_done(client, pipeline)  # nothing listed yet
    Dispatcher(client, keys, Progress(client, keys), batch="b").dispatch([{"name": "a", "version": "1"}])
    client.hset(keys.batch(), mapping={"id": "b", "listed": 1, "new": 1, "complete": 1})
    assert not batch_done(client, pipeline)  # a is queued
    snap = status(client, pipeline)
    assert snap["stages"]["work"]["backlog"] == 1 and snap["stages"]["work"]["lag"] == 1
    assert snap["stages"]["work"]["desired_replicas"] == 1  # no autoscaler decision yet: one replica for work
    Progress(client, keys).mark(["a"], "dead")
    assert not batch_done(client, pipeline)  # its entry is still in the stage's stream
    client.xgroup_create(keys.stream("source"), "work", id="0")  # the manager makes it; this test has none
    [(_, [(entry_id, _)])] = client.xreadgroup("work", "c", {keys.stream("source"): ">"})
    client.xack(keys.stream("source"), "work", entry_id)
    assert batch_done(client, pipeline)


def test_once_lists_and_dispatches_then_returns(settings: Settings, client: redis.Redis, source_url: str,
                                                source_dir: Path) -> None:
    pipeline = make_pipeline(settings.pipeline, source_dir)
    run_manager(pipeline, settings, source_url, threading.Event(), once=True)
    snap = status(client, pipeline)
    assert snap["batch"]["complete"] and snap["counts"]["queued"] == 25 and snap["stages"]["work"]["backlog"] == 25
    assert snap["stages"]["work"]["desired_replicas"] == 1
    with pytest.raises(httpx.ConnectError):
        run_manager(pipeline, settings, f"http://127.0.0.1:{free_port()}", threading.Event(), once=True)
