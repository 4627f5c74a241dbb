"""Redis faults under a running pipeline (issue 11, part 2), each a whole `batchmesh run` (bench.redis_faults):

- the run's embedded redis-server SIGKILLed mid-run with `appendfsync always` and restarted by its keeper on the
  same port and files loses no acknowledged item (read from a copy of its AOF before the restart), and the batch
  finishes exactly;
- an older AOF copy without the stages' consumer groups restored under the running pipeline: the groups are
  re-created without re-running what the restored Redis had done (core.rewind), none lost;
- then, in the same run, a Redis frozen by SIGSTOP: every role reports it (batchmesh_redis_up 0, /healthz 503
  naming Redis), waits with bounded backoff, and carries on after SIGCONT with no role restarted.

And the pieces: the fsync policy setting, the keeper restarting an embedded server that died, the re-creation
script's reconcile, and a commit refused once its entries are no longer ours. The long runs (400 items, a 30 s
outage, redis:7 in a container) are `python -m bench.redis_faults`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from live_run import sample, scrape, wait_for

from bench.redis_faults import fault_kill, fault_old_aof, freeze
from bench.redis_faults_run import Figures, Run
from services.core import Commit, Keys, Settings, StreamConsumer, WorkItem
from services.core.embedded import EmbeddedRedis, RedisConfigError, appendfsync_policy
from services.core.rewind import RECONCILER, StaleCommit, create_group


def _explain(f: Figures) -> str:
    return f"{f}"


def _probe_every_role_reports_redis_down(seen: dict[str, tuple[float | None, int, str]]) -> Callable[[Run], None]:
    def probe(run: Run) -> None:
        targets = run.targets()
        redis_roles = {name: t for name, t in targets.items() if name != "source"}
        assert {"manager", "router-total", "worker-work-0", "worker-work-1"} <= set(redis_roles), targets

        def all_down() -> bool:
            for name, target in redis_roles.items():
                reply = httpx.get(f"http://{target}/healthz", timeout=3)
                seen[name] = (sample(scrape(target), "batchmesh_redis_up"), reply.status_code, reply.text)
            return all(up == 0 and code == 503 and "redis" in body.lower() for up, code, body in seen.values())

        wait_for("every role to report Redis down", all_down, timeout_s=15, every_s=0.2)
        assert httpx.get(f"http://{targets['source']}/healthz", timeout=3).status_code == 200  # no Redis there
    return probe


@pytest.mark.one_backend
def test_a_sigkilled_embedded_server_loses_nothing_acknowledged_and_a_frozen_one_is_waited_out(
        tmp_path: Path) -> None:
    """The run's own embedded server (appendfsync always), SIGKILLed by pid at 40% and restarted by its keeper;
    then, once the run resumed, frozen by SIGSTOP for 5 s: every role reports it and waits."""
    seen: dict[str, tuple[float | None, int, str]] = {}
    probe = _probe_every_role_reports_redis_down(seen)
    f = fault_kill(tmp_path, "always", 60, "embedded", env={"BATCHMESH_REDIS_TIMEOUT_S": "1"},
                   then=lambda run, server: freeze(run, server, 5.0, probe))
    assert f.acknowledged_before >= 15, _explain(f)  # the kill came mid-run, with items acknowledged
    assert f.lost_after_restart == 0 and f.commits_lost == 0, _explain(f)
    assert f.rerun_of_kept == 0, _explain(f)  # nothing the restarted Redis had as done ran again
    assert f.exact and f.role_restarts == 0, _explain(f)  # every item once, the reduce exact, nobody restarted
    assert len(seen) >= 4, seen
    logs = "".join(p.read_text() for p in (tmp_path / "st" / "logs").rglob("*.log"))
    assert "redis.down" in logs and "redis.up" in logs and "exited on its own; restarting" in (
        tmp_path / "st" / "redis" / "keeper.log").read_text()


@pytest.mark.one_backend
def test_an_older_aof_without_the_groups_restored_under_a_running_pipeline(tmp_path: Path) -> None:
    f = fault_old_aof(tmp_path, 60, destroy_groups=True)
    assert f.lost_after_restart > 0, _explain(f)  # the restore really forgot acknowledged work
    assert f.rerun_of_kept == 0, _explain(f)  # what it kept as done was not re-delivered
    assert f.exact and f.role_restarts == 0, _explain(f)  # every item once, the reduce exact, nobody crashed
    assert "stage.regroup" in "".join(p.read_text() for p in (tmp_path / "st" / "logs").rglob("*.log"))


# -- the pieces -------------------------------------------------------------------------------------------------


def test_a_healthz_reason_names_redis_and_never_a_password() -> None:
    from services.core.health import RoleHealth

    health = RoleHealth("secretive", "worker", "s").started()
    try:
        health.redis_down(redis.ConnectionError("Error 111 connecting to redis://app:hunter2@db:6379/0. refused"))
        problem = health.problem() or ""
        assert problem.startswith("worker s: redis: ConnectionError") and "hunter2" not in problem
        assert "redis://app:***@db:6379/0" in problem
    finally:
        health.stopped()


def test_the_fsync_policy_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert appendfsync_policy({}) == "everysec"
    assert appendfsync_policy({"BATCHMESH_REDIS_APPENDFSYNC": "Always"}) == "always"
    assert appendfsync_policy({"BATCHMESH_REDIS_FSYNC": "no"}) == "no"  # the compose files' variable
    with pytest.raises(RedisConfigError, match="BATCHMESH_REDIS_APPENDFSYNC='sometimes'"):
        appendfsync_policy({"BATCHMESH_REDIS_APPENDFSYNC": "sometimes"})
    bad = subprocess.run([sys.executable, "-m", "services.cli", "status", "examples/wordcount/pipeline.yaml"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "BATCHMESH_REDIS_APPENDFSYNC": "sometimes", "REDIS_URL": "",
                              "BATCHMESH_DATA_DIR": str(tmp_path / "bad")})
    assert bad.returncode == 2 and "BATCHMESH_REDIS_APPENDFSYNC='sometimes'" in bad.stderr, bad.stderr
    monkeypatch.setenv("BATCHMESH_REDIS_APPENDFSYNC", "always")
    server = EmbeddedRedis(tmp_path / "d")
    url = server.start()
    try:
        assert redis.Redis.from_url(url).config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        server.stop()


def test_the_keeper_restarts_an_embedded_server_that_died_on_the_same_port(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.redis_lease import shared_server

    monkeypatch.setenv("BATCHMESH_REDIS_APPENDFSYNC", "always")
    with shared_server(tmp_path / "d") as url:
        client = redis.Redis.from_url(url, socket_timeout=1)
        client.set("acknowledged", "yes")
        pid = int((tmp_path / "d" / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for("a new server on the same URL", lambda: int(client.info("server")["process_id"]) != pid,
                 timeout_s=15)
        assert client.get("acknowledged") == b"yes"
        wait_for("the new pid recorded", lambda: int((tmp_path / "d" / "redis.pid").read_text()) == int(
            client.info("server")["process_id"]), timeout_s=30)


def _add(client: redis.Redis, keys: Keys, item_id: str, version: str | None = None) -> bytes:
    return client.xadd(keys.stream("source"), WorkItem(id=item_id, data={}, version=version).encode())


def test_a_re_created_group_skips_finished_items_and_hands_out_the_rest(client: redis.Redis,
                                                                        settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    stream = keys.stream("source")
    done = _add(client, keys, "done", "v1")
    changed = _add(client, keys, "changed", "v2")  # done, but as v1: a new version is work again
    dead = _add(client, keys, "dead")
    todo = _add(client, keys, "todo")
    bad = client.xadd(stream, {b"item": b"not json"})  # malformed: handed out, the consumer dead-letters it
    published = _add(client, keys, "published", "v1")  # in flight downstream: this stage's output holds it
    newer = _add(client, keys, "newer", "v2")  # its output holds v1 only: v2 is work
    for item_id in ("published", "newer"):
        client.xadd(keys.stream("work"), WorkItem(id=item_id, data={"r": 1}, version="v1").encode())
    client.hset(keys.arrivals(), keys.stream("work"), 2)  # where the script finds the stage's output streams
    client.hset(keys.states(), mapping={"done": "done", "changed": "done", "dead": "dead", "todo": "running",
                                        "published": "running", "newer": "running"})
    client.hset(keys.versions(), mapping={"done": "v1", "changed": "v1", "dead": "", "todo": ""})

    # the group starts after `done`; `dead` and `published` are read and acknowledged, the unfinished entries read
    # with them handed back; `newer`, after the last finished one, is delivered as usual
    assert create_group(client, keys, stream, "work") == (3, 3)
    assert create_group(client, keys, stream, "work") is None  # it exists now: nothing happens
    [group] = client.xinfo_groups(stream)
    assert group.get("lag", 1) == 1  # Redis 7: the lag counts `newer` alone (ENTRIESREAD given at creation)
    pending = client.xpending_range(stream, "work", "-", "+", 10)
    assert sorted(p["message_id"] for p in pending) == sorted([changed, todo, bad])
    assert {p["consumer"] for p in pending} == {RECONCILER.encode()} and all(
        p["times_delivered"] == 0 for p in pending)  # no delivery counted against them

    consumer = StreamConsumer(client, settings, stage="work", input_stream="source", consumer="w1")
    got = consumer.read()  # the next reclaim takes them at once (idle for ever), as first deliveries
    assert sorted(d.entry_id for d in got) == sorted([changed, todo, bad])
    assert all(d.deliveries == 1 for d in got)
    got += consumer.read(block_ms=0)
    assert [d.entry_id for d in got[3:]] == [newer]
    assert not {done, dead, published} & {d.entry_id for d in got}


def test_a_group_made_over_unfinished_entries_reads_nothing(client: redis.Redis, settings: Settings) -> None:
    """The usual case (entries dispatched before a stage's first consumer): no finished entry, the group at 0."""
    keys = Keys(settings.pipeline)
    for i in range(3):
        _add(client, keys, f"i{i}")
    assert create_group(client, keys, keys.stream("source"), "work") == (0, 0)
    [group] = client.xinfo_groups(keys.stream("source"))
    assert group["pending"] == 0 and group["consumers"] == 0 and group["last-delivered-id"] == b"0-0"


def test_a_commit_of_entries_no_longer_ours_is_refused_whole(client: redis.Redis, settings: Settings) -> None:
    """A consumer holding entries read from a Redis that since went back in time (or whose entries another
    consumer reclaimed) must not publish their outputs: they would be published again after re-delivery."""
    keys = Keys(settings.pipeline)
    mine = StreamConsumer(client, settings, stage="work", input_stream="source", consumer="w1")
    first, second = _add(client, keys, "a"), _add(client, keys, "b")
    batch = mine.read()
    assert [d.entry_id for d in batch] == [first, second]
    client.xclaim(keys.stream("source"), "work", "w2", 0, [second])  # taken over meanwhile
    commit = Commit()
    for d in batch:
        commit.complete(d, ("next", d.item))  # type: ignore[arg-type]
    with pytest.raises(StaleCommit, match="1 of the 2 entries"):
        mine.commit(commit)
    assert not client.exists(keys.stream("next"))  # nothing published
    pending = {p["message_id"]: p["consumer"] for p in client.xpending_range(keys.stream("source"), "work", "-",
                                                                               "+", 10)}
    assert pending == {first: b"w1", second: b"w2"}  # nothing acknowledged: ours is reclaimed later
    assert isinstance(StaleCommit("x"), redis.ConnectionError)  # every role loop abandons the step


def test_a_worker_thread_rides_out_a_stale_commit(client: redis.Redis, settings: Settings, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop abandons the step of a refused commit: the worker lives on and the item is processed and published
    to the next stage once."""
    from services.core.spec import Pipeline
    from services.workers import run_worker

    keys = Keys(settings.pipeline)
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": settings.pipeline, "source": {"path": "."},
        "stages": {"work": {"work": {"input": "source", "worker": "echo"}},
                   "sink": {"work": {"input": "work", "worker": "noop"}}}})
    real = StreamConsumer.commit
    stolen: list[bytes] = []

    def steal_first(self: StreamConsumer, commit: Commit) -> None:
        if self.stage == "work" and not stolen and commit.acks:  # taken over just before the first commit
            stolen.append(commit.acks[0])
            client.xclaim(self.stream_key, self.group, "thief", 0, [commit.acks[0]])
        real(self, commit)

    cfg = settings.model_copy(update={"out_dir": tmp_path / "out", "max_deliveries": 5})
    stop = threading.Event()
    monkeypatch.setattr(StreamConsumer, "commit", steal_first)
    threads = [threading.Thread(target=run_worker, args=(pipeline, stage, cfg, stop), daemon=True)
               for stage in ("work", "sink")]
    for t in threads:
        t.start()
    try:
        wait_for("the groups", lambda: client.xinfo_groups(keys.stream("source")) and client.xinfo_groups(
            keys.stream("work")))
        _add(client, keys, "x")
        wait_for("the item's result at the sink, once the thief's claim went idle", lambda: client.hget(
            keys.results(), "x"), timeout_s=60)
        assert stolen and all(t.is_alive() for t in threads)
        time.sleep(0.3)
        assert int(client.hget(keys.arrivals(), keys.stream("work")) or 0) == 1  # published once
        assert int(client.hget(keys.stage_stats("work"), "out") or 0) == 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
