"""The stage runtime against a real Redis: the commit is all-or-nothing (an EXEC-time error, a crash before
EXEC), outputs and acks land together, and read() keeps reclaimed and new entries both moving."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from services.core import CommitError, Keys, Settings, StreamConsumer, WorkItem
from services.core import stage as stage_module
from services.core.stage import Commit

ROOT = Path(__file__).resolve().parents[2]


def consumer(client: redis.Redis, settings: Settings, name: str = "c1", stage: str = "work") -> StreamConsumer:
    return StreamConsumer(client, settings, stage=stage, input_stream="in", consumer=name)


def add(client: redis.Redis, settings: Settings, *ids: str, stream: str = "in") -> None:
    for item_id in ids:
        client.xadd(Keys(settings.pipeline).stream(stream), WorkItem(id=item_id, data={"n": item_id}).encode())


def pending(client: redis.Redis, c: StreamConsumer) -> int:
    return int(client.xpending(c.stream_key, c.group)["pending"])


def test_commit_publishes_outputs_and_acks_inputs(client: redis.Redis, settings: Settings) -> None:
    c = consumer(client, settings)
    add(client, settings, "a", "b")
    batch = c.read()
    commit = Commit()
    for d in batch:
        assert d.item is not None
        commit.complete(d, ("out", d.item.model_copy(update={"data": {"seen": d.item.id}})))
    c.commit(commit)
    out = client.xrange(Keys(settings.pipeline).stream("out"))
    assert [WorkItem.decode(f).data for _, f in out] == [{"seen": "a"}, {"seen": "b"}]
    assert pending(client, c) == 0
    assert client.hget(Keys(settings.pipeline).stage_stats("work"), "out") == b"2"


def test_an_exec_time_error_commits_nothing(client: redis.Redis, settings: Settings) -> None:
    """HSET on a key holding a string fails at EXEC, where MULTI would still apply the XADD and the XACK."""
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a")
    (d,) = c.read()
    assert d.item is not None
    client.set(keys.prefix + ":not-a-hash", "x")
    commit = Commit()
    commit.record(d, b'{"ok":true}')
    commit.complete(d, ("out", d.item))
    commit.also(lambda pipe: pipe.hset(keys.prefix + ":not-a-hash", "f", "v"))
    with pytest.raises(CommitError) as raised:
        c.commit(commit)
    assert raised.value.partial is False
    assert client.exists(keys.stream("out")) == 0, "nothing published"
    assert pending(client, c) == 1, "nothing acknowledged"
    assert client.exists(keys.results(), keys.states(), keys.stage_stats("work")) == 0


def test_a_progress_key_of_the_wrong_type_commits_nothing(client: redis.Redis, settings: Settings) -> None:
    """The state change runs as a script inside the transaction; its keys are checked before EXEC too."""
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a")
    (d,) = c.read()
    client.set(keys.states(), "not a hash")
    commit = Commit()
    commit.record(d, b"{}")
    with pytest.raises(CommitError, match="holds a string"):
        c.commit(commit)
    assert pending(client, c) == 1 and client.exists(keys.results(), keys.counts()) == 0


def test_an_error_the_check_cannot_see_is_reported_as_partial(
    client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents the residual: a key whose type changes between the check and EXEC (simulated by skipping the
    check) leaves the other commands applied. It must be loud, never silent."""
    monkeypatch.setattr(stage_module, "check_key_types", lambda client, commands, consumer=None: None)
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, "a")
    (d,) = c.read()
    client.set(keys.prefix + ":not-a-hash", "x")
    commit = Commit()
    commit.complete(d)
    commit.also(lambda pipe: pipe.hset(keys.prefix + ":not-a-hash", "f", "v"))
    with pytest.raises(CommitError) as raised:
        c.commit(commit)
    assert raised.value.partial is True
    assert pending(client, c) == 0  # what MULTI/EXEC alone does: the ack went through


CRASHING_COMMIT = """
import sys
import redis
from services.core import Settings, StreamConsumer
from services.core.stage import Commit

settings = Settings()
client = redis.Redis.from_url(settings.redis_url, client_name="doomed")
c = StreamConsumer(client, settings, stage="work", input_stream="in", consumer="doomed")
batch = c.read(count=10)
commit = Commit()
for d in batch:
    commit.complete(d, ("out", d.item))
print(len(batch), flush=True)
sys.stdin.readline()
c.commit(commit)
print("committed", flush=True)
"""


def _wait_blocked_in_multi(client: redis.Redis, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in client.client_list():
            if info.get("name") == name and "x" in info["flags"] and "b" in info["flags"]:
                return  # inside MULTI and blocked by the pause: the EXEC is sent but has not run
        time.sleep(0.02)
    raise AssertionError(f"client {name!r} never blocked inside its transaction")


def test_a_crash_before_exec_commits_nothing_and_the_entry_is_reclaimed(
    client: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.pipeline)
    rescuer = consumer(client, settings, name="rescuer")
    add(client, settings, "a")
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "BATCHMESH_PIPELINE": settings.pipeline,
           "BATCHMESH_VISIBILITY_TIMEOUT_MS": str(settings.visibility_timeout_ms), "BATCHMESH_BLOCK_MS": "100"}
    child = subprocess.Popen([sys.executable, "-c", CRASHING_COMMIT], cwd=ROOT, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "1"
        client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
        try:
            child.stdin.write("\n")
            child.stdin.flush()
            _wait_blocked_in_multi(client, "doomed")
            child.kill()  # SIGKILL: the process dies with its transaction in flight
            child.wait(timeout=10)
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -9
    assert client.exists(keys.stream("out")) == 0, "nothing published"
    assert client.xpending(rescuer.stream_key, "work")["consumers"] == [{"name": b"doomed", "pending": 1}]
    time.sleep(settings.visibility_timeout_ms / 1000 + 0.05)
    (d,) = rescuer.reclaim()
    assert d.item is not None and d.item.id == "a" and d.deliveries == 2
    commit = Commit()
    commit.complete(d, ("out", d.item))
    rescuer.commit(commit)
    assert client.xlen(keys.stream("out")) == 1 and pending(client, rescuer) == 0


def test_reclaimed_entries_do_not_starve_new_ones(client: redis.Redis, settings: Settings) -> None:
    """Slow batches (longer than half the visibility timeout) make a reclaim due at every read; with entries to
    reclaim every time, new entries must still be read every other call."""
    crashed = consumer(client, settings, name="crashed")
    add(client, settings, *[f"old{i}" for i in range(8)])
    assert len(crashed.read(count=8)) == 8
    add(client, settings, *[f"new{i}" for i in range(4)])
    time.sleep(settings.visibility_timeout_ms / 1000 + 0.05)
    live = consumer(client, settings, name="live")
    seen: list[list[str]] = []
    for _ in range(4):
        batch = live.read(count=2)
        seen.append([d.item.id for d in batch if d.item is not None])
        commit = Commit()
        for d in batch:
            commit.complete(d)
        live.commit(commit)
        time.sleep(settings.visibility_timeout_ms / 2000 + 0.02)  # a slow batch: the next reclaim is due
    assert seen[0] == ["old0", "old1"]
    assert seen[1] == ["new0", "new1"], seen
    assert seen[2] == ["old2", "old3"] and seen[3] == ["new2", "new3"], seen


def test_read_only_reclaims_when_due(client: redis.Redis, settings: Settings) -> None:
    settings = settings.model_copy(update={"visibility_timeout_ms": 2000})  # due every 1 s: 5 reads take far less
    c = consumer(client, settings)
    calls: list[int] = []
    real = c.reclaim

    def counting(count: int | None = None) -> list[stage_module.Delivery]:
        calls.append(1)
        return real(count)

    c.reclaim = counting  # type: ignore[method-assign]
    for _ in range(5):
        c.read(block_ms=0)
    assert len(calls) == 1, "one reclaim per half visibility timeout, not one per read"
    time.sleep(settings.visibility_timeout_ms / 2000 + 0.02)
    c.read(block_ms=0)
    assert len(calls) == 2
