"""Redis outages are ridden out. A whole `batchmesh run --watch` (source, a merge router, a stream worker, a reduce
barrier, the manager) on a redis-server that the test SIGKILLs and restarts on the same port and data dir while
items are in flight; and a worker whose Redis comes back empty (its consumer group gone)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis
from live_run import (
    KillableRedis,
    by_role_name,
    healthz,
    role_pids,
    sample,
    scrape,
    start_run,
    stop_run,
    targets,
    wait_for,
)
from prometheus_client import REGISTRY

from services.core import Keys, Settings
from services.core.spec import Pipeline, load_pipeline
from services.workers import run_worker

SPEC = """
apiVersion: batchmesh/v1
kind: Pipeline
name: {name}
source: {{type: directory, path: ./in, glob: "*.txt", poll: 0.3s}}
defaults: {{visibility_timeout: 1.5s, max_deliveries: 20}}
stages:
  merged: {{merge: {{inputs: [source]}}}}
  work:   {{work: {{input: merged, worker: sleep, replicas: {{min: 1, max: 1}}}}}}
  total:  {{reduce: {{input: work, fold: {{files: {{count: true}}}}}}}}
"""


ROLES = {"manager": "manager", "router-merged": "router", "router-total": "barrier", "worker-work-0": "worker"}


def done(client: redis.Redis, keys: Keys) -> int:
    """Items done: folded into the reduce (the pipeline's end)."""
    return int(client.hget(keys.counts(), "done") or 0)


def _files(root: Path, start: int, n: int) -> None:
    for i in range(start, start + n):
        (root / f"f{i:03d}.txt").write_text(f"file {i}")


def test_every_role_rides_out_a_redis_kill_and_restart(tmp_path: Path) -> None:
    name = "outage"
    server = KillableRedis(tmp_path / "redis")
    url = server.start()
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(SPEC.format(name=name))
    source = tmp_path / "in"
    source.mkdir()
    _files(source, 0, 15)  # before
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    keys = Keys(name)
    run = start_run(tmp_path, spec, source, url, env={"BATCHMESH_SLEEP_SECONDS": "0.05"})
    try:
        roles = ("source", "manager", "router-merged", "router-total", "worker-work-0")
        live = wait_for("every role listed and healthy", lambda: (t := by_role_name(targets(tmp_path, name)))
                        and set(roles) <= set(t) and all(healthz(t[r]) == 200 for r in roles) and t, timeout_s=60)
        pids = wait_for("the role processes", lambda: (p := role_pids(run.pid)) and len(p) == 5 and p)
        wait_for("some items done before the outage", lambda: done(client, keys) >= 3)

        server.kill()
        _files(source, 15, 10)  # during: listed by the source, dispatched once Redis is back
        for role, metric_role in ROLES.items():  # Redis stays down until every role's own loop has seen it
            wait_for(f"{role} to report Redis down", lambda role=role, r=metric_role: sample(
                scrape(live[role]), "batchmesh_redis_up", role=r) == 0 and healthz(live[role]) == 503, timeout_s=60)
        assert healthz(live["source"]) == 200  # the source does not use Redis
        server.start()
        _files(source, 25, 10)  # after

        wait_for("all 35 items done", lambda: done(client, keys) == 35, timeout_s=60)
        stats = {k.decode(): int(v) for k, v in client.hgetall(keys.stage_stats("work")).items()}
        assert stats["out"] == 35  # each item committed exactly once (a re-sent commit would count twice)
        assert int(client.hget(keys.arrivals(), keys.stream("work")) or 0) == 35  # and published once
        assert int(client.hget(keys.arrivals(), keys.stream("merged")) or 0) == 35
        assert not client.exists(keys.dead_letters("work"))

        for role, metric_role in ROLES.items():
            up = wait_for(f"{role}'s redis_up back at 1", lambda role=role, r=metric_role: (
                s := scrape(live[role])) and sample(s, "batchmesh_redis_up", role=r) == 1 and s, timeout_s=30)
            assert (sample(up, "batchmesh_redis_disconnects_total", role=metric_role) or 0) >= 1, role
            assert healthz(live[role]) == 200
        assert role_pids(run.pid) == pids  # nobody crashed and was restarted
        assert run.poll() is None
    except AssertionError as exc:  # say what the roles were doing
        logs = sorted((tmp_path / "st" / "logs" / name).glob("*.log"))
        raise AssertionError(f"{exc}\n" + "\n".join(f"== {f.name}\n{f.read_text()[-3000:]}" for f in logs)) from None
    finally:
        stop_run(run)
        server.stop()
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_worker_re_creates_its_group_when_redis_comes_back_empty(tmp_path: Path) -> None:
    server = KillableRedis(tmp_path / "redis", persist=False)
    url = server.start()
    spec = tmp_path / "pipeline.yaml"
    spec.write_text("""
apiVersion: batchmesh/v1
kind: Pipeline
name: empty
source: {type: directory, path: ./in}
stages:
  work: {work: {input: source, worker: echo}}
""")
    pipeline = load_pipeline(spec)
    settings = Settings(redis_url=url, pipeline="empty", block_ms=100, visibility_timeout_ms=500,
                        out_dir=tmp_path / "out")
    keys = Keys("empty")
    client = redis.Redis.from_url(url)
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(pipeline, "work", settings, stop), daemon=True)

    def publish(ids: range) -> None:
        from services.core import WorkItem

        for i in ids:
            client.xadd(keys.stream("source"), WorkItem(id=f"i{i}", data={"n": i}).encode())

    def disconnects() -> float:
        return REGISTRY.get_sample_value("batchmesh_redis_disconnects_total",
                                         {"pipeline": "empty", "role": "worker"}) or 0

    before = disconnects()
    thread.start()
    try:
        wait_for("the worker's group", lambda: client.xinfo_groups(keys.stream("source")))
        publish(range(5))
        wait_for("5 results", lambda: client.hlen(keys.results()) == 5)
        server.kill()
        wait_for("the worker to see Redis down", lambda: REGISTRY.get_sample_value(
            "batchmesh_redis_up", {"pipeline": "empty", "role": "worker"}) == 0, timeout_s=30)
        server.start()  # empty: no stream, no group, no results
        wait_for("the group re-created", lambda: client.xinfo_groups(keys.stream("source")), timeout_s=30)
        publish(range(5, 12))
        wait_for("the 7 items published after the restart", lambda: client.hlen(keys.results()) == 7)
        assert thread.is_alive()
        assert disconnects() == before + 1  # one outage, however many retries
        assert REGISTRY.get_sample_value("batchmesh_redis_up", {"pipeline": "empty", "role": "worker"}) == 1
    finally:
        stop.set()
        thread.join(10)
        server.stop()
    assert not thread.is_alive()


def test_the_process_executor_rides_out_a_redis_restart(tmp_path: Path) -> None:
    """The manager's executors run in its threads: a connection error starts the executor's loop over (what it
    held uncommitted is reclaimed after the visibility timeout) instead of killing it, and so the manager."""
    from services.core import Progress, WorkItem
    from services.manager.executors import StageContext, executor_class, stage_settings

    server = KillableRedis(tmp_path / "redis")
    url = server.start()
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": "proc", "source": {"path": "."},
        "stages": {"w": {"work": {"input": "source", "executor": "process", "concurrency": 2,
                                  "command": ["sh", "-c", "sleep 0.05; echo '{}'"]}}}})
    settings = Settings(redis_url=url, pipeline="proc", block_ms=100, visibility_timeout_ms=800,
                        max_deliveries=10, out_dir=tmp_path / "out")
    client = redis.Redis.from_url(url)
    keys = Keys("proc")
    progress = Progress(client, keys)

    def publish(ids: range) -> None:
        for i in ids:
            client.xadd(keys.stream("source"), WorkItem(id=f"i{i}", data={}).encode())

    executor = executor_class("process")(StageContext(client, pipeline, "w", stage_settings(pipeline, "w",
                                                                                           settings)))
    executor.start()
    try:
        wait_for("the executor's group", lambda: client.xinfo_groups(keys.stream("source")))
        publish(range(10))
        wait_for("a few done", lambda: client.hlen(keys.results()) >= 2)
        server.kill()
        wait_for("the executor to see Redis down", lambda: REGISTRY.get_sample_value(
            "batchmesh_redis_up", {"pipeline": "proc", "role": "manager"}) == 0, timeout_s=30)
        server.start()
        publish(range(10, 20))
        wait_for("all 20 results", lambda: client.hlen(keys.results()) == 20, timeout_s=60)
        assert executor.alive and executor.error is None
        assert int(client.hget(keys.stage_stats("w"), "out") or 0) == 20  # each committed once
        assert progress.counts()["done"] == 20
    finally:
        executor.stop(10)
        server.stop()


def test_a_worker_started_before_redis_waits_for_it(tmp_path: Path) -> None:
    server = KillableRedis(tmp_path / "redis", persist=False)  # not started yet: the port refuses connections
    spec = tmp_path / "pipeline.yaml"
    spec.write_text("""
apiVersion: batchmesh/v1
kind: Pipeline
name: early
source: {type: directory, path: ./in}
stages:
  work: {work: {input: source, worker: echo}}
""")
    settings = Settings(redis_url=server.url, pipeline="early", block_ms=100, out_dir=tmp_path / "out")
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(load_pipeline(spec), "work", settings, stop), daemon=True)
    thread.start()
    try:
        wait_for("the worker to report Redis down", lambda: REGISTRY.get_sample_value(
            "batchmesh_redis_up", {"pipeline": "early", "role": "worker"}) == 0, timeout_s=30)
        assert thread.is_alive()
        server.start()
        client = redis.Redis.from_url(server.url)
        keys = Keys("early")
        wait_for("the worker's group", lambda: client.xinfo_groups(keys.stream("source")), timeout_s=30)
        from services.core import WorkItem

        client.xadd(keys.stream("source"), WorkItem(id="a", data={"x": 1}).encode())
        wait_for("the item's result", lambda: client.hget(keys.results(), "a"))
    finally:
        stop.set()
        thread.join(10)
        server.stop()


def test_a_commit_cut_off_by_a_connection_loss_is_never_re_sent(settings: Settings, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a connection can break during a commit: after EXEC was applied (the reply lost) and before it
    was sent. Neither is re-sent; the second's entries stay pending and are reclaimed: every item is published
    to the next stage exactly once."""
    from services.core import StreamConsumer, WorkItem

    name = settings.pipeline
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
        "stages": {"work": {"work": {"input": "source", "worker": "echo"}},
                   "sink": {"work": {"input": "work", "worker": "noop"}}}})
    real_execute = StreamConsumer._execute
    cuts: list[str] = []

    def flaky_execute(self: StreamConsumer, pipe) -> None:  # type: ignore[no-untyped-def]
        if self.stage == "work" and len(cuts) == 0:
            real_execute(self, pipe)
            cuts.append("reply lost")
            raise redis.ConnectionError("Connection closed by server (after EXEC)")
        if self.stage == "work" and len(cuts) == 1:
            cuts.append("never sent")
            raise redis.ConnectionError("Connection closed by server (before EXEC)")
        real_execute(self, pipe)

    monkeypatch.setattr(StreamConsumer, "_execute", flaky_execute)
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(name)
    cfg = settings.model_copy(update={"out_dir": tmp_path / "out", "max_deliveries": 5})
    for i in range(6):
        client.xadd(keys.stream("source"), WorkItem(id=f"i{i}", data={"n": i}).encode())
    stop = threading.Event()
    threads = [threading.Thread(target=run_worker, args=(pipeline, stage, cfg, stop), daemon=True)
               for stage in ("work", "sink")]
    for t in threads:
        t.start()
    try:
        wait_for("6 results at the sink", lambda: client.hlen(keys.results()) == 6, timeout_s=60)
        assert cuts == ["reply lost", "never sent"]
        assert int(client.hget(keys.arrivals(), keys.stream("work"))) == 6  # published once each
        assert int(client.hget(keys.stage_stats("work"), "out")) == 6
        assert client.xlen(keys.stream("work")) <= 6
        assert all(t.is_alive() for t in threads)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
