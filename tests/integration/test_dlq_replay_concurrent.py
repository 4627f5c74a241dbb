"""Two replays started together over the same dead letters (handed case "concurrent replay", issue 11): each dead
letter is moved exactly once whoever runs the replay, each replayer reports only what it moved, and every item
then runs exactly once. Threads on the library call, and two real `batchmesh dlq replay` processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import redis

from services.core import QUEUED, Keys, Progress, Settings, StreamConsumer, WorkItem, list_dead_letters, replay
from services.core.item import TO
from services.core.stage import Commit

N = 300
ROOT = Path(__file__).resolve().parents[2]


def dead_letter_all(client: redis.Redis, settings: Settings, n: int = N) -> StreamConsumer:
    """n items of batch b1 on the stream `in`, read by stage `work` and dead-lettered there."""
    c = StreamConsumer(client, settings, stage="work", input_stream="in", consumer="work-1")
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(c.stream_key, WorkItem(id=f"item{i:03d}", data={"i": i}, batch="b1").encode())
    pipe.execute()
    seen = 0
    while seen < n:
        batch = c.read(count=100, block_ms=0)
        assert batch, "every entry is read"
        commit = Commit()
        for d in batch:
            commit.dead_letter(d, "downstream unavailable")
        c.commit(commit)
        seen += len(batch)
    assert len(list_dead_letters(client, Keys(settings.pipeline), "work")) == n
    return c


def run_everything_once(client: redis.Redis, c: StreamConsumer) -> Counter[str]:
    """Consume what the replays put back, as the stage would: item id -> times run."""
    ran: Counter[str] = Counter()
    while batch := c.read(count=100, block_ms=0):
        commit = Commit()
        for d in batch:
            assert d.item is not None
            ran[d.item.id] += 1
            commit.complete(d)
        c.commit(commit)
    return ran


def check_moved_once(client: redis.Redis, settings: Settings, c: StreamConsumer, moved: list[int]) -> None:
    keys = Keys(settings.pipeline)
    assert sum(moved) == N, f"replayers reported {moved}: together they must have moved each dead letter once"
    assert list_dead_letters(client, keys, "work") == []
    entries = client.xrange(c.stream_key, min="-", max="+")
    replayed = [f for _, f in entries if f.get(TO) == b"work"]
    assert len(replayed) == N, "one entry put back per dead letter"
    assert Progress(client, keys).counts()[QUEUED] == N
    assert Progress(client, keys).counts()["dead"] == 0
    assert client.scard(keys.batch_dead("b1", "work")) == 0, "a barrier waits for every replayed item again"
    ran = run_everything_once(client, c)
    assert len(ran) == N and set(ran.values()) == {1}, "every item runs exactly once"


def test_two_replays_at_once_move_each_dead_letter_exactly_once(client: redis.Redis, settings: Settings) -> None:
    c = dead_letter_all(client, settings)
    keys = Keys(settings.pipeline)
    start = threading.Barrier(2)
    moved = [0, 0]
    items: list[list[WorkItem]] = [[], []]

    def replayer(k: int) -> None:
        own = redis.Redis.from_url(settings.redis_url or "")  # its own connection: as two CLIs would
        start.wait()
        moved[k] = replay(own, keys, "work", replayed=items[k])

    threads = [threading.Thread(target=replayer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [len(x) for x in items] == moved, "each replayer reports what it moved, and only that"
    assert not {i.id for i in items[0]} & {i.id for i in items[1]}
    check_moved_once(client, settings, c, moved)


def test_two_dlq_replay_commands_started_together(client: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    c = dead_letter_all(client, settings)
    spec = tmp_path / "p.yaml"
    spec.write_text(f"apiVersion: batchmesh/v1\nname: {settings.pipeline}\nsource: {{path: {tmp_path}}}\n"
                    "stages:\n  work: {work: {input: source, worker: echo}}\n")
    env = {**os.environ, "BATCHMESH_REDIS_URL": settings.redis_url or "", "BATCHMESH_DATA_DIR": str(tmp_path / "d")}
    procs = [subprocess.Popen([sys.executable, "-m", "services.cli", "dlq", "replay", str(spec), "--stage", "work"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    moved = []
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        m = re.search(r"replayed (\d+) item", err)
        assert m, err
        moved.append(int(m[1]))
    # (the dead letters name the stream they came from, `in`: the replay puts them back there, whatever the spec)
    check_moved_once(client, settings, c, moved)
