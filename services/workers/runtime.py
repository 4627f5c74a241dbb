"""The work-queue worker (the book's ch. 10 worker, as a long-running stream consumer): read a batch of items from
the stage's input stream (about BATCH_SECONDS of work: hundreds of fast items, one or two slow ones), run the
stage's worker chain on each, then publish/record the results, retry or dead-letter the failures and acknowledge
— all in ONE commit per batch."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

from services.core import metrics
from services.core.command import Outcome, failure_reason
from services.core.embedded import redis_url
from services.core.health import RoleHealth
from services.core.item import WorkItem, encode_json
from services.core.reconnect import TRANSIENT, Reconnect
from services.core.redis_connect import connect
from services.core.results import finish
from services.core.retry import retry_policy
from services.core.settings import Settings
from services.core.spec import Pipeline, SpecError
from services.core.stage import Commit, Delivery, StreamConsumer

from .chain import Chain, build_chain
from .lease import Lease
from .mark_later import DeferredMark
from .watchdog import Watchdog

log = logging.getLogger(__name__)

COMMAND_BATCH_FACTOR = 4  # command batches hold concurrency * 4 items: a crash re-runs little work
BATCH_SECONDS = 0.05  # a read takes about this much work: slow items are read (and committed) a few at a time, so
# the next stage starts on them at once and other replicas get the rest; fast items still go 256 to a commit


def run_worker(pipeline: Pipeline, stage: str, settings: Settings, stop: threading.Event, *,
               max_items: int | None = None, idle_exit_s: float = 0.0) -> None:
    """Process the stage's items until `stop` is set; the batch in hand is finished and committed first.

    Bounded (a Job's pod, e.g. a KEDA ScaledJob's): with `max_items` N it reads at most N entries in all, commits
    them as ever (done, retried or dead-lettered: one entry each) and returns; with `idle_exit_s` > 0 it also
    returns after that many seconds without an entry to read (another pod took it)."""
    if stage not in pipeline.stages:
        raise SpecError("stage", f"no stage {stage!r} (stages: {', '.join(pipeline.stages)})")
    work = pipeline.stages[stage].body
    if work.max_deliveries is not None:
        settings = settings.model_copy(update={"max_deliveries": work.max_deliveries})
    chain = build_chain(work, stage, pipeline.plugins)  # unknown workers fail here, before anything is read
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        client = connect(url, settings)
        health = RoleHealth(settings.pipeline, "worker", stage)
        try:  # a Redis not up yet (or restarting) is waited for: starting creates the group, safe to repeat
            worker = Reconnect(client, health, stop).call(lambda: _Worker(pipeline, stage, settings, chain, client))
            if worker is not None:
                worker.max_items, worker.idle_exit_s = max_items, idle_exit_s
                worker.loop(stop, health)
        finally:
            client.close()


def _service(spent: list[float]) -> list[tuple[str, int]]:
    """In the batch's commit: the stage's total service time (µs) and items timed, which the manager's
    autoscaler turns into the service time S per item (services.manager.autoscale)."""
    return [("service_us", int(sum(spent) * 1e6)), ("timed", len(spent))]


_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}")  # an id that is its own dirname (WorkItem.dirname)
_child = getattr(Path, "_make_child_relpath", None)  # CPython's join of one plain name, without parsing it again


def _item_dir(root: Path, item: WorkItem) -> Path:
    """`root / item.dirname`, cheaply for the usual id (a plain name): no regex substitution, no path parsing."""
    if _PLAIN_ID.fullmatch(item.id):
        return _child(root, item.id) if _child is not None else root / item.id
    return root / item.dirname


class _Worker:
    def __init__(self, pipeline: Pipeline, stage: str, settings: Settings, chain: Chain, client: redis.Redis) -> None:
        work = pipeline.stages[stage].body
        self.stage, self.settings, self.chain, self.client = stage, settings, chain, client
        self.concurrency, self.timeout = work.concurrency, work.timeout
        self.watchdog: Watchdog | None = None  # set while the loop runs
        self.marks: DeferredMark | None = None  # set while the loop runs, for chains without commands
        self.output = stage if pipeline.readers(stage) else None  # None: a sink records results instead
        self.out_root = settings.out_dir / stage
        self.count = settings.batch_size
        if chain.has_commands:
            self.count = min(self.count, work.concurrency * COMMAND_BATCH_FACTOR)
        self.item_s: float | None = None  # moving average of an item's time: None until the first batch
        # One consumer name per run: two workers in one process must not share a pending list.
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Reclaimed entries one at a time: an in-process worker that dies on a poison item (os._exit, SIGKILL)
        # then takes only that item's delivery count up, and it reaches max_deliveries and is dead-lettered.
        self.consumer = StreamConsumer(client, settings, stage=stage, input_stream=work.input, consumer=name,
                                       retry=retry_policy(pipeline, stage), isolate_reclaimed=True)
        labels = {"pipeline": settings.pipeline, "stage": stage}
        self.m_time = metrics.PROCESSING.labels(**labels)
        self.m_workers = metrics.WORKERS.labels(**labels)
        self.done = self.failed = 0
        self._spent: list[float] = []
        self.max_items: int | None = None  # bounded: stop after this many entries (see run_worker)
        self.idle_exit_s = 0.0
        self.handled = 0  # entries committed (any outcome)
        self._stop = threading.Event()

    def loop(self, stop: threading.Event, health: RoleHealth | None = None) -> None:
        c = self.consumer
        log.info("worker started", extra={
            "event": "worker.start", "stage": self.stage, "consumer": c.consumer, "input": c.stream_key,
            "adapters": self.chain.names, "concurrency": self.concurrency, "batch": self.count})
        lease = Lease(self.client, c.stream_key, c.group, c.consumer, self.settings.visibility_timeout_ms)
        # Functions cannot be killed at the stage timeout as commands are: a hung one ends the process (watchdog).
        self.watchdog = Watchdog(self.timeout, self.stage) if self.chain.has_functions else None
        self.marks = DeferredMark(self.client, self.stage) if not self.chain.has_commands else None
        self.m_workers.inc()
        health = (health or RoleHealth(self.settings.pipeline, "worker", self.stage)).started()
        self._stop = stop
        try:
            with self._pool() as pool:
                idle = [time.monotonic()]  # when an entry was last read

                def step() -> None:
                    batch = c.read(self.read_count())  # what the last commit read ahead, if anything
                    if batch:
                        self.process(batch, pool, lease)
                        self.handled += len(batch)
                        idle[0] = time.monotonic()
                        if self.max_items is not None and self.handled >= self.max_items:
                            self._bounded(stop, "max_items")
                    else:
                        c.maybe_trim()  # idle: trim what the last batches acknowledged (rate-limited in core)
                        if self.idle_exit_s and time.monotonic() - idle[0] >= self.idle_exit_s:
                            self._bounded(stop, "idle")

                # A Redis outage is waited out (the batch in hand, if its commit did not get through, stays
                # pending and is reclaimed after the visibility timeout: never committed twice).
                Reconnect(self.client, health, stop).run(step, then=c.ensure_group)
                if c.has_read_ahead():  # stopping: a batch the last commit read ahead is finished, not left pending
                    batch = c.read()
                    try:  # once: a commit is never re-sent (an outage now leaves it pending, to be reclaimed)
                        self.process(batch, pool, lease)
                    except TRANSIENT as exc:
                        log.warning("could not finish the batch read ahead; it stays pending", extra={
                            "event": "worker.ahead_left", "stage": self.stage, "entries": len(batch),
                            "error": str(exc)})
            self._leave()
        except Exception as exc:
            # A CommitError or a bug: the uncommitted batch stays pending and is reclaimed after the
            # visibility timeout; the process exits so that its supervisor (or Kubernetes) restarts it.
            log.error("worker crashed", exc_info=True, extra={"event": "worker.crash", "stage": self.stage,
                                                              "consumer": c.consumer, "error": str(exc)})
            raise
        finally:
            health.stopped()
            lease.close()
            if self.watchdog is not None:
                self.watchdog.close()
            if self.marks is not None:
                self.marks.close()
            self.m_workers.dec()
            log.info("worker stopped", extra={"event": "worker.stop", "stage": self.stage, "consumer": c.consumer,
                                             "done": self.done, "failed": self.failed})

    def read_count(self) -> int:
        """How many entries to read: about BATCH_SECONDS of work (at least one per slot), at most the batch size."""
        least = self.concurrency if self.chain.has_commands else 1
        if self.item_s is None:
            return self._cap(least)  # the first items tell how slow they are
        return self._cap(max(least, min(self.count, int(BATCH_SECONDS / max(self.item_s, 1e-6)))))

    def _cap(self, count: int) -> int:
        return count if self.max_items is None else max(1, min(count, self.max_items - self.handled))

    def ahead_count(self, batch: int) -> int:
        """How many entries the commit of a batch of `batch` entries may read ahead: 0 when stopping, when a
        bounded worker has its fill, or when the next read is a reclaim (core.stage.can_read_ahead)."""
        if self._stop.is_set() or not self.consumer.can_read_ahead():
            return 0
        if self.max_items is not None:
            left = self.max_items - self.handled - batch
            return min(self.read_count(), left) if left > 0 else 0
        return self.read_count()

    def _bounded(self, stop: threading.Event, why: str) -> None:
        log.info("bounded worker done", extra={"event": "worker.bounded", "stage": self.stage, "why": why,
                                               "handled": self.handled, "max_items": self.max_items})
        stop.set()

    @contextmanager
    def _pool(self) -> Iterator[ThreadPoolExecutor | None]:
        """Threads only for commands (they wait on child processes); functions run in a plain loop, no overhead."""
        if not self.chain.has_commands or self.concurrency == 1:
            yield None
            return
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"worker-{self.stage}") as pool:
            yield pool

    def process(self, batch: list[Delivery], pool: ThreadPoolExecutor | None, lease: Lease) -> None:
        commit = Commit()
        items: list[Delivery] = []
        for d in batch:
            if d.item is None:
                commit.dead_letter(d, d.malformed or "malformed item")
            else:
                items.append(d)
        c = self.consumer
        # Indexed in case the entries are deleted while pending (core.held): sent now, confirmed before the commit,
        # so that Redis applies it while the items run. Marked running: now for commands, after DELAY_S for
        # functions (workers.mark_later: a batch done sooner goes from queued to done in its commit).
        marks = self.marks
        replies = [c.held.send_hold(c, items, running=marks is None)]
        if marks is not None and items:
            marks.arm(lambda: c.held.running_command(c, items))
        lease.hold([d.entry_id for d in items])
        began = time.perf_counter()
        self._spent = []  # each item's time, for the autoscaler's service time (stage stats)
        try:
            if pool is None and self.chain.function is not None:
                self._run_batch(items, commit)
            else:
                self._run_outcomes(items, commit, pool)
            if marks is not None:
                replies.append(marks.settle())  # raises if sending the mark failed: the batch stays pending
            if self._spent:
                metrics.observe_many(self.m_time, self._spent)  # one update per bucket for the batch
                commit.stats += _service(self._spent)
            for reply in replies:
                if reply is not None:
                    reply.wait()
            replies = []
            c.read_next = self.ahead_count(len(batch))  # the next batch, read in the commit's round trip
            c.commit(commit)
        finally:
            if marks is not None:
                with suppress(Exception):  # a failed batch: no mark from now on, none to read
                    replies.append(marks.settle())
            for reply in replies:
                if reply is not None:
                    reply.abandon()
            lease.release()
        if items:
            per_item = (time.perf_counter() - began) / len(items) * (self.concurrency if pool is not None else 1)
            self.item_s = per_item if self.item_s is None else 0.5 * self.item_s + 0.5 * per_item

    def _run_outcomes(self, items: list[Delivery], commit: Commit, pool: ThreadPoolExecutor | None) -> None:
        """Run the items (in the pool, or one after the other here) and put their outcomes into the commit."""
        outcomes = pool.map(self._run, items) if pool is not None else self._run_all(items)
        sink = self.output is None
        for d, outcome in zip(items, outcomes, strict=True):
            if outcome.ok and sink and not outcome.result:  # a sink's empty result: nothing to encode
                commit.record(d, b"{}")
                self.done += 1
            elif outcome.ok:
                self._finish(commit, d, outcome.result or {})
            else:
                self._failed(commit, d, outcome.reason)

    def _run_batch(self, items: list[Delivery], commit: Commit) -> None:
        """`_run_outcomes` for a chain of one function, in one loop: FunctionAdapter.call per item (any exception
        the item's failure with chain's reason), the outcome put into the commit at once, the watchdog told
        without a lock."""
        call = self.chain.function.call  # type: ignore[union-attr]
        watchdog, root, spent, clock = self.watchdog, self.out_root, self._spent, time.perf_counter
        sink = self.output is None
        empty: list[Delivery] = []  # a sink's empty results: recorded together
        started = clock()
        try:
            for d in items:
                item = d.item
                assert item is not None
                if watchdog is not None:
                    watchdog.track(started, item.id)
                reason = None
                try:
                    result = call(item, _item_dir(root, item))
                except Exception as exc:  # the item's failure, never the worker's crash (as FunctionAdapter.run)
                    reason = failure_reason(exc)
                ended = clock()
                spent.append(ended - started)
                started = ended
                if reason is not None:
                    self._failed(commit, d, reason)
                elif not result and sink:
                    empty.append(d)
                else:
                    self._finish(commit, d, result)
        finally:
            if watchdog is not None:
                watchdog.untrack()
        if empty:
            commit.record_many(empty, b"{}")
            self.done += len(empty)

    def _run(self, delivery: Delivery) -> Outcome:
        """One item (in a pool's thread): timed into `_spent`."""
        item = delivery.item
        assert item is not None
        started = time.perf_counter()
        if self.watchdog is not None:
            self.watchdog.begin(item.id)
        try:
            outcome = self.chain.run(item, _item_dir(self.out_root, item))
        finally:
            if self.watchdog is not None:
                self.watchdog.end()
        self._spent.append(time.perf_counter() - started)
        return outcome

    def _run_all(self, items: list[Delivery]) -> list[Outcome]:
        """The batch's items one after the other in this thread: `_run` without its per-call lookups."""
        run, watchdog, root, spent, clock = self.chain.run, self.watchdog, self.out_root, self._spent, time.perf_counter
        outcomes = []
        for d in items:
            item = d.item
            assert item is not None
            started = clock()
            if watchdog is None:
                outcomes.append(run(item, _item_dir(root, item)))
            else:
                watchdog.begin(item.id)
                try:
                    outcomes.append(run(item, _item_dir(root, item)))
                finally:
                    watchdog.end()
            spent.append(clock() - started)
        return outcomes

    def _finish(self, commit: Commit, delivery: Delivery, result: dict[str, Any]) -> None:
        """Result JSON is encoded here, never later inside the commit, where it would break the whole batch."""
        try:
            if self.output is not None:  # a sink's result is encoded by finish itself, before it is recorded
                encode_json(result)
            finish(self.consumer, commit, delivery, result, output=self.output)
        except (TypeError, ValueError) as exc:
            self._failed(commit, delivery, f"result is not JSON: {exc}")
            return
        self.done += 1

    def _failed(self, commit: Commit, delivery: Delivery, reason: str) -> None:
        commit.fail(delivery, reason)
        self.failed += 1
        item = delivery.item
        assert item is not None
        log.warning("item failed", extra={
            "event": "item.failed", "stage": self.stage, "item": item.id, "delivery": delivery.deliveries,
            "max_deliveries": self.settings.max_deliveries, "reason": reason[-300:]})

    def _leave(self) -> None:
        """On a clean stop, drop this consumer from the group (names would pile up with every restart), unless it
        still holds entries: deleting it would orphan them, so then they stay for another replica to reclaim."""
        c = self.consumer
        try:
            pending = c.client.xpending_range(c.stream_key, c.group, min="-", max="+", count=1,
                                              consumername=c.consumer)
            if not pending:
                c.client.xgroup_delconsumer(c.stream_key, c.group, c.consumer)
            c.forget()
        except redis.RedisError as exc:
            log.warning("could not leave the consumer group", extra={"event": "worker.leave_failed",
                                                                      "error": str(exc)})

