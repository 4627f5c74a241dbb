"""The work-queue manager (book ch. 10): every `source.poll` seconds it lists the source page by page, dispatches
what is new or changed, and records the batch manifest; it runs the stages' executors and serves its status.

The source has no completion endpoint: what was dispatched (versions), where each item is (states) and the batch
manifest all live in Redis, so a restarted manager carries on where the last one stopped."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from services.core import Keys, Progress, Settings, redis_url
from services.core.health import RoleHealth
from services.core.masking import bearer_headers, source_token
from services.core.metrics import serve_metrics
from services.core.reconnect import TRANSIENT, Reconnect
from services.core.redis_connect import connect
from services.core.retry import RetryQueue
from services.core.rewind import create_group
from services.core.spec import Pipeline

from . import batches, gauges
from .autoscale import Autoscaler, rule_from_settings
from .diff import DiffStats, Dispatcher
from .executors import Executor, StageContext, executor_class, stage_settings
from .lister import TIMEOUT as LIST_TIMEOUT
from .lister import SourceError, list_source
from .report import batch_done, status
from .schedule import BATCH, POLL, Schedule

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often gauges are refreshed and executors checked between polls


class Manager:
    def __init__(self, client: Redis, pipeline: Pipeline, settings: Settings, source_url: str, *,
                 pipeline_path: Path | None = None, page_size: int = 1000) -> None:
        self.client, self.pipeline, self.settings = client, pipeline, settings
        self.source_url, self.pipeline_path, self.page_size = source_url, pipeline_path, page_size
        self.keys = Keys(pipeline.name)
        self.dispatcher = Dispatcher(client, self.keys, Progress(client, self.keys), batch="")
        self.complete = False  # the first listing pass is done
        self.http = httpx.Client(timeout=LIST_TIMEOUT, headers=bearer_headers(source_token(settings)))  # one for
        # every poll: a new client costs a TLS context; the source's token, if it wants one (source.auth)
        self.gauges = gauges.ClusterGauges(client, pipeline, settings.visibility_timeout_ms / 1000)
        self.autoscaler = Autoscaler(client, pipeline, rule_from_settings(settings))  # book's rule, or lag
        self._repoll: str | None = None  # a poll a Redis outage interrupted: run again once Redis is back
        self._closed: str | None = None  # the batch this manager closed last (see reconcile_rewind)

    def ensure_groups(self) -> None:
        """Every stage's group exists before anything is dispatched: safe trimming counts only existing groups,
        and a group made later would start after entries already trimmed away."""
        for name, stage in self.pipeline.stages.items():
            for stream in stage.body.inputs:  # re-created over entries: finished items skipped (core.rewind)
                create_group(self.client, self.keys, self.keys.stream(stream), name)

    def poll(self, *, scheduled: bool = False) -> DiffStats:
        """List every page and dispatch it as a new batch. The first pass and a `scheduled` one are always a
        batch (maybe empty: its barriers fire at once); a re-poll is one only if it finds new work. The first pass
        of a restarted manager resumes the current batch if its listing was cut short, else is a re-poll."""
        total = DiffStats()
        began = time.perf_counter()
        # A restarted manager (a current batch exists: `batchmesh run` and a new deployment start without one)
        # finishes the batch its predecessor was listing, and opens none for a listing that had finished: a
        # restart never splits a batch nor fires its barriers a second time (found by bench/chaos.py).
        current = batches.current(self.client, self.keys) if not self.complete else None
        resumed = current is not None and not current[1]
        batch = self.dispatcher.batch = current[0] if current and resumed else batches.new_batch_id()
        announced = resumed if current else scheduled or not self.complete
        self.dispatcher.reran = False
        if announced and not resumed:
            batches.announce(self.client, self.keys, batch)
        skipped: list[dict[str, Any]] = []  # records the source could not serve: reported, the rest flows
        for page in list_source(self.source_url, self.page_size, client=self.http, skipped=skipped):
            stats = self.dispatcher.dispatch(page)
            total += stats
            if stats.new and not announced:
                batches.announce(self.client, self.keys, batch)
                announced = True
            if announced:  # the current batch shows its progress while it lists
                pipe = self.client.pipeline(transaction=True)
                pipe.hincrby(self.keys.batch(), "new", stats.new)
                pipe.hincrby(self.keys.batch(), "known", stats.known)  # seen in an earlier batch: not work again
                pipe.hset(self.keys.batch(), mapping={"listed": total.listed, "updated_at": f"{time.time():.3f}"})
                pipe.execute()
        if announced:
            batches.record_skipped(self.client, self.keys, batch, skipped)
            # recount: the batch's item set is exact where the listing's counts are not (a resumed batch, calls
            # re-run after a lost connection)
            batches.close(self.client, self.keys, batch, total.listed, recount=resumed or self.dispatcher.reran)
            self._closed = batch
        level = logging.INFO if total.new or not self.complete else logging.DEBUG
        log.log(level, "listing dispatched", extra={
            "event": "manager.dispatch", "batch": batch if announced else None, "listed": total.listed,
            "new": total.new, "known": total.known, "busy": total.busy, "invalid": total.invalid,
            "source_skipped": len(skipped),
            "seconds": round(time.perf_counter() - began, 3)})
        self.complete = True
        return total

    def start_executors(self) -> dict[str, Executor]:
        executors: dict[str, Executor] = {}
        for name, work in self.pipeline.work_stages().items():  # routers run as their own role
            ctx = StageContext(self.client, self.pipeline, name, stage_settings(self.pipeline, name, self.settings),
                               self.pipeline_path)
            executors[name] = executor_class(work.executor)(ctx)
        for executor in executors.values():
            executor.start()
        return executors

    def tick(self, executors: dict[str, Executor]) -> None:
        for name, executor in executors.items():
            if not executor.alive:
                raise RuntimeError(f"the {executor.name} executor of stage {name!r} crashed: {executor.error!r}")
        self.move_retries()
        self.reconcile_rewind()
        snapshot = status(self.client, self.pipeline)
        self.autoscaler.observe(snapshot)  # sets each stream stage's desired_replicas before the gauges read it
        self.gauges.observe(snapshot)
        for name, executor in executors.items():
            executor.observe(snapshot["stages"][name])

    def reconcile_rewind(self) -> None:
        """A Redis restarted from an older state (core.rewind) may have forgotten that the batch this manager
        closed last was closed: list again as a restarted manager does (the unclosed current batch is resumed; the
        diff dispatches what Redis forgot and counts what it kept as known). One HGET per tick."""
        if self._closed and self.client.hget(self.keys.manifest(self._closed), "complete") != b"1":
            log.warning("Redis forgot that a batch was closed (restarted from an older state); listing again",
                        extra={"event": "manager.rewind", "batch": self._closed})
            self._closed, self.complete = None, False
            self._repoll = self._repoll or POLL

    def move_retries(self) -> None:
        """Put every work stage's due retries back on its stream (core.retry): the stage's own consumers do it
        too, but a stage scaled to zero replicas has none, and a retry must show up as lag to scale it up."""
        for name, work in self.pipeline.work_stages().items():
            if work.executor != "rq":  # rq retries in rq itself
                RetryQueue(self.client, self.keys, name, self.keys.stream(work.input)).move_due()

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        """Poll, dispatch and tick until `stop` is set. A Redis outage is ridden out (see core.reconnect): the
        loop waits for Redis, re-creates the groups, re-runs a listing pass the outage cut short and goes on."""
        health = RoleHealth(self.pipeline.name, "manager").started()
        reconnect = Reconnect(self.client, health, stop)
        executors: dict[str, Executor] = {}
        try:
            while True:  # nothing has run yet: retrying the start is safe
                try:
                    self.ensure_groups()
                    schedule = Schedule(self.client, self.pipeline,
                                        lambda: not batch_done(self.client, self.pipeline))
                    break
                except TRANSIENT as exc:
                    if once or not reconnect.recover(exc):
                        raise
            executors = {} if once else self.start_executors()
            self._next_tick = 0.0
            while not stop.is_set():
                try:
                    if self._step(schedule, executors, stop, once):
                        break
                except TRANSIENT as exc:
                    if once or not reconnect.recover(exc, then=self.ensure_groups):
                        raise
        finally:
            health.stopped()
            for executor in executors.values():
                executor.stop()
            self.http.close()

    def _step(self, schedule: Schedule, executors: dict[str, Executor], stop: threading.Event, once: bool) -> bool:
        """One turn of the loop; True when `once` is done."""
        if due := self._repoll or schedule.due():
            self._repoll = due
            try:
                self.poll(scheduled=due == BATCH)
            except (httpx.HTTPError, SourceError) as exc:
                if once:
                    raise
                log.warning("listing failed; retrying at the next poll", extra={
                    "event": "manager.list_failed", "reason": str(exc)[:300]})
            self._repoll = None
            if once:
                return True
        if time.monotonic() >= self._next_tick:
            self.tick(executors)
            self._next_tick = time.monotonic() + TICK_S
        stop.wait(max(0.0, min(schedule.wait_s(), self._next_tick - time.monotonic())))
        return False


def run_manager(pipeline: Pipeline, settings: Settings, source_url: str, stop: threading.Event, port: int = 0,
                once: bool = False, *, pipeline_path: Path | None = None, host: str = "127.0.0.1",
                page_size: int = 1000) -> None:
    """Run the manager until `stop` is set (or after one listing pass with `once`). `port` serves
    /api/v1/status and /metrics (0 = none; then `settings.metrics_port` serves /metrics alone, if set).
    `pipeline_path` is the spec file, for stages whose items run the one-shot worker runtime."""
    from .server import StatusServer  # FastAPI/uvicorn only when the manager runs, not for status()

    if settings.pipeline != pipeline.name:
        settings = settings.model_copy(update={"pipeline": pipeline.name})
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        client = connect(url, settings)
        server = StatusServer(client, pipeline, host, port) if port else None
        if server is not None:
            server.start()
        else:
            serve_metrics(settings.metrics_port)
        try:
            Manager(client, pipeline, settings, source_url, pipeline_path=pipeline_path,
                    page_size=page_size).run(stop, once=once)
        finally:
            if server is not None:
                server.stop()
