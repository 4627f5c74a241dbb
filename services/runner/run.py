"""`batchmesh run`: a whole pipeline on this machine, every role its own process, until the batch is done."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from services.core import Keys, Settings, list_dead_letters, redis_url, strict_json
from services.core.embedded import redact, wait_loaded
from services.core.health import RoleHealth
from services.core.reconnect import TRANSIENT, Backoff
from services.core.redis_connect import client_url
from services.core.redis_connect import connect as connect_redis
from services.core.results import results
from services.core.spec import Pipeline
from services.manager import status
from services.manager.report import done_in
from services.render.roles import manager_args, role_env, router_args, rq_argv, source_args, worker_args

from .lifecycle import late_notes
from .supervisor import GIVE_UP_AFTER, Supervisor, free_port, progress_of
from .view import RunView, filter_notes

log = logging.getLogger(__name__)
EXIT_DEAD, EXIT_TIMEOUT = 1, 3
STARTUP_RESTARTS = 3  # error exits of a role before the source is healthy, then the run gives up
STARTUP_TIMEOUT_S = 60.0
LOOK_S = 0.2  # how often the runner looks at its roles (restarts the dead ones) and, by default, at the status
WATCH_STATUS_S = 1.0  # `--watch --quiet`: how often it reads the status (the autoscaler decides once a second)


class StartupFailed(RuntimeError):
    """The source never answered /healthz (a role cannot start): one line for the user, exit 1."""


@contextmanager
def connect(settings: Settings) -> Iterator[redis.Redis]:
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        client = connect_redis(url, settings)
        wait_loaded(client, redact(url))  # a Redis loading its AOF answers every command with BusyLoadingError
        yield client


def pipeline_status(pipeline: Pipeline, settings: Settings) -> dict[str, Any]:
    with connect(settings) as client:
        return status(client, pipeline)


def dlq_list(pipeline: Pipeline, settings: Settings, stage: str | None) -> list[dict[str, Any]]:
    with connect(settings) as client:
        return _dead_letters(client, pipeline, stage)


def dlq_replay(pipeline: Pipeline, settings: Settings, stage: str | None,
               ids: list[str] | None) -> tuple[int, list[str]]:
    """Put dead letters back. Returns how many, and what will happen to them: one line per stage and batch
    (a barrier that already fired folds them as late items, runner.lifecycle)."""
    from services.core import replay

    from .lifecycle import describe_replay

    with connect(settings) as client:
        keys = Keys(pipeline.name)
        replayed: dict[str, list[Any]] = {}
        for name in [stage] if stage else pipeline.stages:
            replay(client, keys, name, ids, replayed=replayed.setdefault(name, []))
        return sum(map(len, replayed.values())), describe_replay(client, pipeline, replayed)


def _dead_letters(client: redis.Redis, pipeline: Pipeline, stage: str | None, since: str = "-",
                  count: int = 1000) -> list[dict[str, Any]]:
    """Dead letters of a stage (default: every stage), those added since the entry id `since` only if given."""
    keys = Keys(pipeline.name)
    return [
        {"stage": d.stage, "id": d.entry_id, "item": d.item_id, "reason": d.reason, "deliveries": d.deliveries}
        for name in ([stage] if stage else pipeline.stages)
        for d in list_dead_letters(client, keys, name, count=count, start=since)
    ]


def _redis_now(client: redis.Redis) -> str:
    """Now as a stream entry id on Redis's clock: dead letters added later have ids at or after it."""
    seconds, micros = client.time()
    return f"{seconds * 1000 + micros // 1000}-0"


def targets_path(settings: Settings, pipeline: str) -> Path:
    """The run's Prometheus file_sd targets: every live role's /metrics (a `file_sd_configs` entry can point here)."""
    return settings.data_dir / "run" / pipeline / "targets.json"


def _wait_healthy(url: str, supervisor: Supervisor, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        # A role that dies while we wait is restarted with its backoff like any crashed role (no progress to judge
        # yet: None); killed by a signal (SIGKILL, OOM) it is never given up before the deadline, while one that
        # exits with an error STARTUP_RESTARTS times cannot start at all (bench/chaos.py found the first).
        supervisor.restart_dead(None)
        if failing := [name for name, r in supervisor.roles.items()
                       if r.restarts >= STARTUP_RESTARTS and (r.last_code or 0) > 0]:
            raise StartupFailed(f"a role cannot start ({STARTUP_RESTARTS} exits): "
                                f"{'; '.join(map(supervisor.describe_exit, failing))}; logs in {supervisor.log_dir}")
        time.sleep(0.1)
    raise StartupFailed(f"the source did not answer {url} within {timeout_s:g} s; logs in {supervisor.log_dir}")


def give_up_after(pipeline: Pipeline) -> int:
    """Crashes in a row with nothing committed before a role is given up (runner.supervisor): more than any stage's
    max_deliveries, since a poison item may crash its worker that often before it is dead-lettered."""
    most = max((w.max_deliveries or pipeline.defaults.max_deliveries for w in pipeline.work_stages().values()),
               default=pipeline.defaults.max_deliveries)
    return max(GIVE_UP_AFTER, most + 2)


def _scale_workers(supervisor: Supervisor, pipeline: Pipeline, path: Path, snap: dict[str, Any]) -> None:
    """Keep each stream stage at the replica count the manager's autoscaler decided (services.manager.autoscale,
    between min and max): the local actuator, as KEDA is on Kubernetes. At least one replica runs, so a batch
    always finishes."""
    for name, work in pipeline.work_stages().items():
        if work.executor != "stream":
            continue
        want = max(int(snap["stages"].get(name, {}).get("desired_replicas", 1)), 1)
        running = sorted(r for r in supervisor.roles if r.startswith(f"worker-{name}-"))
        for i in range(len(running), want):
            supervisor.start(f"worker-{name}-{i}", *worker_args(str(path), name), port_flag="--metrics-port",
                             labels={"role": "worker", "stage": name})
        for extra in running[want:]:
            supervisor.stop(extra)


def _start_rq_workers(supervisor: Supervisor, pipeline: Pipeline) -> None:
    """rq stages: rq's own worker runs the jobs the manager enqueues (one per replica). It reads the URL from
    RQ_REDIS_URL (rq's own variable, with the TLS settings as URL options), not from its argv, where every local
    user could read the password."""
    if any(work.executor == "rq" for work in pipeline.work_stages().values()):
        supervisor.env["RQ_REDIS_URL"] = client_url(supervisor.env["REDIS_URL"])
    for name, work in pipeline.work_stages().items():
        if work.executor == "rq":
            for i in range(max(work.replicas.min, 1)):
                supervisor.start_argv(f"rq-{name}-{i}", rq_argv(pipeline, name, None, sys.executable))


def run_pipeline(pipeline: Pipeline, path: Path, out_dir: Path, *, timeout: float = 0,
                 input_path: str | None = None, quiet: bool = False, watch: bool = False) -> int:
    settings = Settings(pipeline=pipeline.name, out_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        client = connect_redis(url, settings)
        wait_loaded(client, redact(url))
        bin_dir = str(Path(sys.executable).parent)  # commands like [python, x.py] find this environment first
        env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
               **role_env(pipeline, url, str(out_dir.resolve()))}  # the same as in compose (services/render)
        env.pop("BATCHMESH_METRICS_PORT", None)  # every role gets a port of its own (see Supervisor)
        supervisor = Supervisor(env, settings.data_dir / "logs" / pipeline.name,
                                targets_file=targets_path(settings, pipeline.name))
        try:
            port = free_port()
            supervisor.start("source", *source_args(str(path), port=port, input_path=input_path), port=port,
                             labels={"role": "source", "stage": ""})
            _wait_healthy(f"http://127.0.0.1:{port}/healthz", supervisor)
            client.delete(Keys(pipeline.name).batch())  # the previous run's "complete" must not end this one
            since = _redis_now(client)  # dead letters from here on are this run's: they set the exit code
            baseline = status(client, pipeline)["stages"]
            _start_rq_workers(supervisor, pipeline)
            for name in pipeline.router_stages():
                role = "barrier" if name in pipeline.barrier_stages() else "router"
                supervisor.start(f"router-{name}", *router_args(str(path), name), port_flag="--metrics-port",
                                 labels={"role": role, "stage": name})
            supervisor.start("manager", *manager_args(str(path), f"http://127.0.0.1:{port}"), port_flag="--port",
                             labels={"role": "manager", "stage": ""})
            code = _watch(client, pipeline, path, supervisor, baseline, timeout, quiet, out_dir, watch, since=since)
        finally:
            supervisor.stop_all()
        _write_manifest(client, pipeline, out_dir)
        return code


def _watch(client: redis.Redis, pipeline: Pipeline, path: Path, supervisor: Supervisor,
           baseline: dict[str, Any], timeout: float, quiet: bool, out_dir: Path, watch: bool,
           since: str = "-") -> int:
    """Until the batch is done (with `watch`: until Ctrl-C, batch after batch as the schedule starts them). The
    exit code counts the dead letters of this run only (added since `since`): older ones are reported apart."""
    started = time.monotonic()
    with RunView(list(pipeline.stages), quiet=quiet) as view:
        try:
            health, backoff = RoleHealth(pipeline.name, "runner"), Backoff()
            read_every = WATCH_STATUS_S if watch and quiet else LOOK_S
            snap: dict[str, Any] | None = None
            read_at = float("-inf")
            while True:
                # The status (2 round trips, ~2 ms of CPU here) is read every LOOK_S, or every WATCH_STATUS_S for
                # `--watch --quiet` (no bar to draw, no batch end to wait for: the always-on service case) — and
                # always at once when a role has exited, so restart_dead judges progress on a fresh reading.
                fresh = snap is None or time.monotonic() - read_at >= read_every or _a_role_exited(supervisor)
                if fresh:
                    try:
                        snap = status(client, pipeline)
                        read_at = time.monotonic()
                        if not health.redis_ok:
                            view.console.print("Redis back; carrying on")
                        health.redis_up()
                        backoff.reset()
                    except TRANSIENT as exc:  # Redis restarting: wait, still watching the roles and the clock
                        if health.redis_down(exc):  # once per outage
                            view.console.print(f"Redis unreachable at {_url_of(client)} ({type(exc).__name__}), "
                                               "retrying")
                        snap = None
                if snap is not None and fresh:
                    view.update(snap, baseline)
                    if not watch and done_in(snap):
                        break
                if timeout and time.monotonic() - started > timeout:
                    view.console.print(f"timed out after {timeout:g}s; the batch is not done")
                    return EXIT_TIMEOUT
                if snap is not None and fresh:
                    _scale_workers(supervisor, pipeline, path, snap)
                if gave_up := supervisor.restart_dead(progress_of(snap) if snap is not None else None,
                                                      give_up_after=give_up_after(pipeline)):
                    view.console.print(f"roles keep crashing without committing anything: {', '.join(gave_up)}; "
                                       f"logs in {supervisor.log_dir}\n{supervisor.describe_given_up(gave_up)}",
                                       markup=False, soft_wrap=True)
                    return EXIT_DEAD
                time.sleep(LOOK_S if snap is not None else backoff.next())
        except KeyboardInterrupt:
            if not watch:
                raise
    snap = status(client, pipeline)
    dead = _dead_letters(client, pipeline, None, since=since, count=100_000)
    older = sum(int(client.xlen(Keys(pipeline.name).dead_letters(name))) for name in pipeline.stages) - len(dead)
    RunView([], quiet=True).summary(snap, dead, str(out_dir), older=older)
    for note in filter_notes(snap, baseline):
        RunView([], quiet=True).console.print(note)
    for note in late_notes(pipeline, snap, baseline):
        RunView([], quiet=True).console.print(note, markup=False, soft_wrap=True)
    skipped = int(snap["batch"].get("source_skipped", 0))  # records the source could not serve: not processed
    return EXIT_DEAD if dead or skipped else 0


def _a_role_exited(supervisor: Supervisor) -> bool:
    return any(r.process is not None and r.process.poll() is not None for r in supervisor.roles.values())


def _source_skipped(client: redis.Redis, pipeline: Pipeline) -> dict[str, Any]:
    """The records the source could not serve in the current batch: a count and the first of them."""
    raw = client.hmget(Keys(pipeline.name).batch(), "source_skipped", "source_skipped_records")
    return {"count": int(raw[0] or 0), "records": json.loads(raw[1] or "[]")}


def _url_of(client: redis.Redis) -> str:
    kw = client.get_connection_kwargs()
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def _write_manifest(client: redis.Redis, pipeline: Pipeline, out_dir: Path) -> None:
    manifest = {
        "pipeline": pipeline.name,
        "results": results(client, Keys(pipeline.name)),
        "dead_letters": _dead_letters(client, pipeline, None),
        "source_skipped": _source_skipped(client, pipeline),
    }
    (out_dir / "manifest.json").write_text(strict_json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True))
