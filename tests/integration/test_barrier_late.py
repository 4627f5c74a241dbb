"""Late items at a barrier that already fired (issue 10, fault 4), on a real Redis, driven step by step: an item
dead-lettered upstream, the batch fires without it, `dlq replay` puts it back, the upstream stage processes it
again. A reduce folds it exactly once and rewrites its aggregate file with `"late": n` (unless the file holds a
later batch); a join counts it; `status` shows the late counts; `describe_replay` says what will happen. And
`reset`: every key of the pipeline, and only those, removed in batches."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from test_reduce import World, make_pipeline

from services.core import Keys, Settings, replay
from services.core.barriers import aggregate, barrier_state
from services.manager import batches, status
from services.runner import lifecycle

FOLD = {"words": {"sum": "data.words"}, "files": {"count": True}}
OPERATORS = {"words": "sum", "files": "count"}


def reduce_world(client: redis.Redis, settings: Settings, out: Path) -> World:
    pipeline = make_pipeline({"work": {"work": {"input": "source", "worker": "noop"}},
                              "gate": {"reduce": {"input": "work", "fold": FOLD, "write": "totals.json"}}})
    return World(client, settings.model_copy(update={"out_dir": out}), pipeline)


def redeliver(w: World, item_id: str) -> None:
    """The upstream stage reads what `dlq replay` put back on its input."""
    for d in w.upstream.read(100, block_ms=0):
        assert d.item is not None
        w.deliveries[d.item.id] = d
    assert item_id in w.deliveries


def replay_all(w: World, stage: str = "work") -> list[str]:
    replayed: dict[str, list[Any]] = {stage: []}
    replay(w.client, w.keys, stage, replayed=replayed[stage])
    return lifecycle.describe_replay(w.client, w.pipeline, replayed)


def test_a_replayed_item_is_folded_once_into_the_fired_reduce_and_the_file_rewritten(
        client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    w = reduce_world(client, settings, tmp_path / "out")
    path = tmp_path / "out" / "totals.json"
    w.dispatch(["a", "b", "c"])
    w.close(3)
    w.publish("a", {"words": {"x": 2}})
    w.publish("b", {"words": {"x": 1, "y": 1}})
    w.dead_letter("c")  # the poison item
    w.settle()
    fired = json.loads(path.read_text())
    assert fired["final"] is True and fired["failed"] == ["c"] and "late" not in fired
    assert fired["aggregate"] == {"words": {"x": 3, "y": 1}, "files": 2}

    [line] = replay_all(w)
    assert line == (f"1 item(s) of stage work replayed into batch {w.batch}; the reduce `gate` already fired: they "
                    f"will be folded as late items and totals.json rewritten")
    redeliver(w, "c")
    w.publish("c", {"words": {"x": 1, "z": 5}})  # fixed: it passes now
    w.settle()
    late = json.loads(path.read_text())
    assert late["aggregate"] == {"words": {"x": 4, "y": 1, "z": 5}, "files": 3}
    assert late["late"] == 1 and late["done"] == 3 and late["failed"] == [] and late["batch"] == w.batch
    assert w.aggregate(OPERATORS) == late["aggregate"]  # Redis and the file agree
    assert len(w.events()) == 1  # the batch-complete event (its output: nobody reads it) is not sent again
    snap = status(client, w.pipeline)
    assert snap["stages"]["gate"]["late"] == 1 and barrier_state(client, w.keys, "gate", w.batch)["late"] == 1

    # replayed twice: dead-lettered again upstream (say a retry that failed after all), replayed, passes again
    w.dead_letter("c")
    [again] = replay_all(w)
    assert "already fired" in again
    redeliver(w, "c")
    w.publish("c", {"words": {"x": 1, "z": 5}})
    w.publish("c", {"words": {"x": 1, "z": 5}})  # and a duplicate on the reduce's input
    w.restart()
    w.settle()
    assert json.loads(path.read_text()) == late  # not folded twice, not counted late twice
    assert status(client, w.pipeline)["stages"]["gate"]["late"] == 1
    assert not list(path.parent.glob(".*tmp"))


def test_the_late_rewrite_keeps_a_later_batchs_file(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    w = reduce_world(client, settings, tmp_path / "out")
    path = tmp_path / "out" / "totals.json"
    first = w.batch
    w.dispatch(["a", "b"])
    w.close(2)
    w.publish("a", {"words": {"x": 1}})
    w.dead_letter("b")
    w.settle()
    second = w.batch = batches.new_batch_id()  # a later batch with an item of its own writes the file
    batches.announce(client, w.keys, second)
    w.dispatch(["n"])
    w.close(1)
    w.publish("n", {"words": {"n": 1}})
    w.settle()
    newer = json.loads(path.read_text())
    assert newer["batch"] == second
    replay_all(w)
    redeliver(w, "b")
    w.batch = first  # the upstream stage's result of `b` carries b's batch, the first
    w.publish("b", {"words": {"x": 7}})
    w.settle()
    assert json.loads(path.read_text()) == newer
    assert aggregate(client, w.keys, "gate", first, OPERATORS) == {"words": {"x": 8}, "files": 2}
    assert barrier_state(client, w.keys, "gate", first)["late"] == 1


def test_a_join_counts_late_items_and_says_so(client: redis.Redis, settings: Settings) -> None:
    pipeline = make_pipeline({"work": {"work": {"input": "source", "worker": "noop"}},
                              "gate": {"join": {"input": "work"}}})
    w = World(client, settings, pipeline)
    w.dispatch(["a", "b"])
    w.close(2)
    w.publish("a", {})
    w.dead_letter("b")
    w.settle()
    [event] = w.events()
    assert event["failed"] == ["b"]
    [line] = replay_all(w)
    assert line.endswith("the join `gate` already fired: they will be counted as late items (`batchmesh status`: "
                         "late); its event is not sent again")
    redeliver(w, "b")
    w.publish("b", {})
    w.settle()
    assert len(w.events()) == 1 and status(client, pipeline)["stages"]["gate"]["late"] == 1


def test_describe_replay_before_the_barrier_fired(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    w = reduce_world(client, settings, tmp_path / "out")
    w.dispatch(["a", "b"])  # the listing is not complete: nothing fires
    w.dead_letter("a")
    [line] = replay_all(w)
    assert line == (f"1 item(s) of stage work replayed into batch {w.batch}; the reduce `gate` has not fired for it "
                    f"yet: they count towards the batch")
    assert replay_all(w) == []  # nothing left to replay


def test_reset_removes_every_key_of_the_pipeline_and_no_other(client: redis.Redis, settings: Settings,
                                                               tmp_path: Path, monkeypatch: Any) -> None:
    w = reduce_world(client, settings, tmp_path / "out")
    other = Keys(f"o{uuid.uuid4().hex[:8]}")
    client.set(f"{other.prefix}:keep", 1)
    client.set(f"bm:{w.pipeline.name}x:keep", 1)  # a name that merely starts the same
    w.dispatch([f"i{n}" for n in range(30)])
    w.close(30)
    for n in range(30):
        w.publish(f"i{n}", {"words": {"x": n}})
    w.settle()
    mine = set(lifecycle.pipeline_keys(client, w.keys))
    assert len(mine) > 10 and all(k.decode().startswith(f"bm:{{{w.pipeline.name}}}:") for k in mine)
    unlinks: list[int] = []
    real = client.unlink
    monkeypatch.setattr(lifecycle, "UNLINK_BATCH", 4)
    monkeypatch.setattr(client, "unlink", lambda *keys: unlinks.append(len(keys)) or real(*keys))
    assert lifecycle.reset(client, w.keys) == len(mine)
    assert max(unlinks) <= 4 and sum(unlinks) == len(mine)
    assert list(lifecycle.pipeline_keys(client, w.keys)) == []
    assert client.get(f"{other.prefix}:keep") == b"1" and client.get(f"bm:{w.pipeline.name}x:keep") == b"1"
    client.delete(f"{other.prefix}:keep", f"bm:{w.pipeline.name}x:keep")


def test_alive_roles_are_consumers_seen_within_the_visibility_timeout(client: redis.Redis,
                                                                       settings: Settings) -> None:
    pipeline = make_pipeline({"work": {"work": {"input": "source", "worker": "noop"}},
                              "gate": {"join": {"input": "work"}}})
    keys, now = Keys(pipeline.name), time.time()
    live = settings.model_copy(update={"visibility_timeout_ms": 10_000})
    assert lifecycle.alive_roles(client, pipeline, live) == {}
    client.zadd(keys.alive("work"), {"w-0": now - 1, "w-1": now - 60})  # w-1 died a minute ago
    client.zadd(keys.alive("gate"), {"g-0": now - 30})
    assert lifecycle.alive_roles(client, pipeline, live) == {"work": 1}
