"""Garbage XADDed into a stage's input stream by someone else — not JSON, no `item` field, missing or mistyped
fields, a 10 MB item, invalid UTF-8 (a surrogate encoded as UTF-8 too) — is dead-lettered with a reason at every
kind of consumer, and the consumer keeps running and processes the good entries around it: a work stage (the
stream executor's worker, and the manager-driven process and rq executors), each router kind on the server-side
(Lua) path and on the Python path, a join and a reduce. Each role runs for real in a thread on the embedded Redis."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from services.core import DONE, Keys, Progress, Settings, WorkItem, list_dead_letters
from services.core.item import MAX_ITEM_BYTES
from services.core.spec import Pipeline
from services.router.run import build_barrier, build_router

pytestmark = pytest.mark.one_backend  # the decode paths are ours (Python and Lua), not the Redis version's

BIG = json.dumps({"id": "huge", "data": {"blob": "x" * (10 * 1024 * 1024)}}).encode()
GARBAGE: list[tuple[str, dict[bytes, bytes]]] = [
    ("not JSON", {b"item": b"{not json"}),
    ("no item field", {b"junk": b"x"}),
    ("empty item", {b"item": b""}),
    ("not an object", {b"item": b"[1, 2, 3]"}),
    ("missing id", {b"item": b'{"data": {"keep": true}}'}),
    ("id of the wrong type", {b"item": b'{"id": 5, "data": {"keep": true}}'}),
    ("data of the wrong type", {b"item": b'{"id": "w", "data": "text"}'}),
    ("invalid UTF-8", {b"item": b'{"id": "bad-\xff\xfe", "data": {"keep": true}}'}),
    ("a UTF-8-encoded surrogate", {b"item": b'{"id": "cesu-\xed\xa0\x80", "data": {"keep": true}}'}),
    ("a 10 MB item", {b"item": BIG}),
]
GOOD = [f"good-{i}" for i in range(6)]


def good_entry(item_id: str, batch: str | None = None) -> dict[bytes, bytes]:
    return WorkItem(id=item_id, data={"keep": True, "kind": "a", "n": 1}, version="v1", batch=batch).encode()


def feed(client: redis.Redis, stream: str, batch: str | None = None) -> None:
    """Good entries before, between and after the garbage."""
    pipe = client.pipeline()
    pipe.xadd(stream, good_entry(GOOD[0], batch))
    pipe.xadd(stream, good_entry(GOOD[1], batch))
    for i, (_, fields) in enumerate(GARBAGE):
        pipe.xadd(stream, fields)
        if i == 4:
            pipe.xadd(stream, good_entry(GOOD[2], batch))
            pipe.xadd(stream, good_entry(GOOD[3], batch))
    pipe.xadd(stream, good_entry(GOOD[4], batch))
    pipe.xadd(stream, good_entry(GOOD[5], batch))
    pipe.execute()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_dead_letters(client: redis.Redis, keys: Keys, stage: str) -> None:
    letters = wait_for(lambda: (found := list_dead_letters(client, keys, stage)) and len(found) >= len(GARBAGE)
                       and found, f"{len(GARBAGE)} dead letters at {stage}")
    assert len(letters) == len(GARBAGE), [letter.reason for letter in letters]
    for letter, (what, _fields) in zip(letters, GARBAGE, strict=True):
        assert letter.reason.startswith("malformed item"), (what, letter.reason)
        assert len(letter.reason) < 500, (what, letter.reason)  # a reason, not the item echoed back
    assert "larger than" in letters[-1].reason


class Role:
    """`step()` called in a thread until stopped; the first exception is kept and re-raised by `stop`."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self.errors: list[BaseException] = []
        self._stop = threading.Event()

        def loop() -> None:
            try:
                while not self._stop.is_set():
                    step()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test
                self.errors.append(exc)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        assert self.thread.is_alive() and not self.errors, f"the role stopped: {self.errors}"
        self._stop.set()
        self.thread.join(20)
        if self.errors:
            raise self.errors[0]


def pipeline(name: str, stages: dict[str, Any]) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                    "stages": stages})


# -- work stages -------------------------------------------------------------------------------------------

def test_stream_worker(client: redis.Redis, settings: Settings, tmp_path: Any) -> None:
    from services.workers import run_worker

    spec = pipeline(settings.pipeline, {"w": {"work": {"input": "source", "worker": "echo"}}})
    keys = Keys(settings.pipeline)
    feed(client, keys.stream("source"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_worker(spec, "w", settings.model_copy(update={"out_dir": tmp_path / "out"}), stop)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        check_dead_letters(client, keys, "w")
        wait_for(lambda: all(Progress(client, keys).state_of(i) == DONE for i in GOOD), "good items done")
        assert thread.is_alive() and not errors
    finally:
        stop.set()
        thread.join(20)
    assert not errors


def test_process_executor(client: redis.Redis, settings: Settings, tmp_path: Any) -> None:
    from services.manager.executors import StageContext, executor_class, stage_settings

    spec = pipeline(settings.pipeline, {"w": {"work": {"input": "source", "executor": "process",
                                                       "command": [sys.executable, "-c", "print('{}')"]}}})
    keys = Keys(settings.pipeline)
    feed(client, keys.stream("source"))
    base = settings.model_copy(update={"out_dir": tmp_path / "out"})
    executor = executor_class("process")(StageContext(client, spec, "w", stage_settings(spec, "w", base)))
    executor.start()
    try:
        check_dead_letters(client, keys, "w")
        wait_for(lambda: all(Progress(client, keys).state_of(i) == DONE for i in GOOD), "good items done")
    finally:
        executor.stop(10)


# -- routers, both paths -----------------------------------------------------------------------------------

ROUTER_SPECS: dict[str, tuple[dict[str, Any], list[str]]] = {  # spec, the output streams good items reach
    "copy": ({"copy": {"input": "source", "to": ["x", "y"]}}, ["r.x", "r.y"]),
    "filter": ({"filter": {"input": "source", "where": "data.keep"}}, ["r"]),
    "split": ({"split": {"input": "source", "by": "data.kind", "routes": {"a": "one"}, "default": "other"}},
              ["r.one", "r.other"]),
    "shard": ({"shard": {"input": "source", "key": "name", "shards": 2}}, ["r.0", "r.1"]),
    "merge": ({"merge": {"inputs": ["source", "side"]}}, ["r"]),
}


@pytest.mark.parametrize("server_side", [True, False], ids=["lua", "python"])
@pytest.mark.parametrize("kind", sorted(ROUTER_SPECS))
def test_router(kind: str, server_side: bool, client: redis.Redis, settings: Settings) -> None:
    stage_spec, outputs = ROUTER_SPECS[kind]
    spec = pipeline(settings.pipeline, {"r": stage_spec}).stages["r"].body
    keys = Keys(settings.pipeline)
    feed(client, keys.stream("source"))
    router = build_router(client, settings, "r", spec, server_side=server_side)
    role = Role(lambda: router.step(50))
    try:
        check_dead_letters(client, keys, "r")

        def routed() -> list[str]:
            ids = [json.loads(fields[b"item"])["id"] for out in outputs
                   for _, fields in client.xrange(keys.stream(out))]
            return ids if len(ids) >= len(GOOD) * (2 if kind == "copy" else 1) else []

        ids = wait_for(routed, "good items routed")
        assert sorted(ids) == sorted(GOOD * (2 if kind == "copy" else 1))
    finally:
        role.stop()


# -- barriers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["join", "reduce"])
def test_barrier(kind: str, client: redis.Redis, settings: Settings) -> None:
    body = {"input": "w"} | ({"fold": {"n": {"sum": "data.n"}, "items": {"count": True}}} if kind == "reduce" else {})
    spec = pipeline(settings.pipeline, {"w": {"work": {"input": "source", "worker": "echo"}}, "b": {kind: body}})
    keys = Keys(settings.pipeline)
    feed(client, keys.stream("w"), batch="b1")
    barrier = build_barrier(client, settings, spec, "b")
    role = Role(lambda: barrier.step(50))
    try:
        check_dead_letters(client, keys, "b")
        arrived = keys.barrier("b", "b1", "in")
        wait_for(lambda: client.scard(arrived) == len(GOOD), "good items folded")
        assert sorted(m.decode() for m in client.smembers(arrived)) == sorted(GOOD)
        if kind == "reduce":
            assert client.hgetall(keys.barrier("b", "b1", "agg"))  # the good items' sums are in the aggregate
    finally:
        role.stop()


def test_the_cap_is_far_above_ordinary_items() -> None:
    assert 1024 * 1024 <= MAX_ITEM_BYTES < len(BIG)


def test_rq_executor(client: redis.Redis, settings: Settings, tmp_path: Any) -> None:
    """The rq executor dead-letters at enqueue time; every good entry becomes exactly one rq job."""
    from rq import Queue

    from services.manager.executors import StageContext, executor_class, rq_queue_name, stage_settings

    spec = pipeline(settings.pipeline, {"w": {"work": {"input": "source", "executor": "rq",
                                                       "command": [sys.executable, "-c", "print('{}')"]}}})
    keys = Keys(settings.pipeline)
    feed(client, keys.stream("source"))
    base = settings.model_copy(update={"out_dir": tmp_path / "out"})
    executor = executor_class("rq")(StageContext(client, spec, "w", stage_settings(spec, "w", base)))
    executor.start()
    try:
        check_dead_letters(client, keys, "w")
        queue = Queue(rq_queue_name(settings.pipeline, "w"), connection=client)
        wait_for(lambda: queue.count == len(GOOD), "one rq job per good entry")
    finally:
        executor.stop(10)
