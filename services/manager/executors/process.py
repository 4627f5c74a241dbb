"""`process`: the book's one-shot worker. The manager consumes the stage's stream itself and runs every item in
its own subprocess, `work.concurrency` at a time.

Per-item overhead is kept near a bare fork+exec: entries are read ahead in batches sized to cover ~200 ms of
work (measured: an item's own run time), so a slot never waits for Redis; results are committed in batches (one
MULTI for all that finished together). Commands this process runs itself are started with posix_spawn and
watched, pipes and pidfd, in one selector by one thread (no thread per item, no hop per result; the next items'
files are prepared while the current ones run) that never calls Redis: its reads, holds, heartbeats and commits
are made on an IO thread (process_io). Executors that run items elsewhere (docker, kubernetes) override `execute`
and get a thread pool whose completions come back through one queue. Entries held longer than the visibility
timeout are heartbeated (XCLAIM JUSTID), so neither this consumer's own reclaim nor another manager's takes a
long-running item away."""

from __future__ import annotations

import logging
import math
import os
import queue
import selectors
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from services.core import Commit, Delivery, StreamConsumer
from services.core import metrics as core_metrics
from services.core.command import Child, Outcome, Prepared, failure_reason, prepare, run_command
from services.core.masking import command_env
from services.core.results import finish
from services.core.retry import retry_policy

from .base import Executor, StageContext
from .process_io import ProcessIo

log = logging.getLogger(__name__)

FLUSH_AFTER_S = 0.02  # a result waits at most this long for others to share its commit
IDLE_WAIT_S = 0.25  # the inline loop looks at `stopping` at least this often
READ_AHEAD_S = 0.2  # read ahead enough items to keep the slots busy this long (a read costs ~3 round trips)
MAX_READ_AHEAD = 256

Done = tuple[Delivery, Outcome, float]


class ProcessExecutor(Executor):
    name = "process"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.argv, self.env = self.command()  # fails at start, not in the thread, if the stage cannot be run
        self.slots = ctx.work.concurrency
        self.avg_s = 0.0  # moving average of an item's run time: sizes the read-ahead
        self._output = ctx.output  # where results go (None: a sink), looked up once

    def command(self) -> tuple[list[str], dict[str, str]]:
        """argv and extra env of every item (the docker executor runs them in a container instead)."""
        return self.ctx.command()

    def read_ahead(self) -> int:
        if not self.avg_s:
            return self.slots
        return min(MAX_READ_AHEAD, max(self.slots, math.ceil(self.slots * READ_AHEAD_S / self.avg_s)))

    def run(self) -> None:
        if type(self).execute is ProcessExecutor.execute and hasattr(os, "pidfd_open"):
            self._run_inline()  # the commands run here: no thread per item, no hop back with each result
            return
        ctx = self.ctx
        self.consumer = c = StreamConsumer(ctx.client, ctx.settings, stage=ctx.stage, input_stream=ctx.work.input,
                                           retry=retry_policy(ctx.pipeline, ctx.stage))
        self.processing = core_metrics.PROCESSING.labels(**self.labels)
        self.done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        held: dict[bytes, Delivery] = {}  # read and not yet finished: submitted to the pool, or running
        commit, first_result = Commit(), 0.0
        beat_every = ctx.settings.visibility_timeout_ms / 3000
        next_beat = time.monotonic() + beat_every
        workers = core_metrics.WORKERS.labels(**self.labels)
        workers.set(self.slots)
        pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix=f"bm-{ctx.stage}")
        try:
            while not self.stopping.is_set():
                ahead = self.read_ahead()
                if len(held) <= self.slots + ahead // 2:  # refill once half the read-ahead is used up
                    block = 0 if held or commit else None  # block only when there is nothing else to do
                    self._submit(pool, c.read(count=self.slots + ahead - len(held), block_ms=block), held, commit)
                if held:
                    try:  # wait for a result; briefly when slots are idle, so the stream is polled again soon
                        first = self.done.get(timeout=0.01 if len(held) < self.slots else beat_every)
                    except queue.Empty:
                        first = None
                    if first is not None:
                        first_result = first_result or time.monotonic()
                        self._settle(commit, held, first)
                        while True:
                            try:
                                self._settle(commit, held, self.done.get_nowait())
                            except queue.Empty:
                                break
                now = time.monotonic()
                if commit and (not held or commit.completed + len(commit.retries) >= ahead
                               or now - first_result >= FLUSH_AFTER_S):
                    self.commit(commit)
                    commit, first_result = Commit(), 0.0
                if held and now >= next_beat:
                    c.client.xclaim(c.stream_key, c.group, c.consumer, min_idle_time=0, message_ids=list(held),
                                    justid=True)  # reset idle time; JUSTID leaves the delivery count alone
                    next_beat = now + beat_every
        finally:
            # Items not started yet stay pending in the stream: a restarted manager reclaims them.
            pool.shutdown(wait=True, cancel_futures=True)
            while True:
                try:
                    self._settle(commit, held, self.done.get_nowait())
                except queue.Empty:
                    break
            self.commit(commit)
            workers.set(0)

    def commit(self, commit: Commit) -> None:
        """Apply a batch of outcomes (the docker executor removes the items' containers only after this)."""
        self.consumer.commit(commit)

    def _submit(self, pool: ThreadPoolExecutor, batch: list[Delivery], held: dict[bytes, Delivery],
                commit: Commit) -> None:
        for delivery in self._hold(batch, held, commit):  # after the hold: no commit may come before it
            pool.submit(self._run_one, delivery)

    def _run_one(self, delivery: Delivery) -> None:
        item = delivery.item
        assert item is not None
        began = time.perf_counter()
        try:
            outcome = self.execute(delivery)
        except Exception as exc:  # e.g. the output dir cannot be written: a failed attempt, not a crash
            outcome = Outcome(False, reason=failure_reason(exc))
        self.done.put((delivery, outcome, time.perf_counter() - began))

    def execute(self, delivery: Delivery) -> Outcome:
        """Run one item (called in a pool thread); subclasses run it elsewhere with the same contract."""
        item = delivery.item
        assert item is not None
        return run_command(self.argv, item, self.ctx.out_dir / item.dirname, timeout=self.ctx.work.timeout,
                           env=self.env)

    def _settle(self, commit: Commit, held: dict[bytes, Delivery], done: Done) -> None:
        delivery, outcome, seconds = done
        held.pop(delivery.entry_id, None)
        self.processing.observe(seconds)
        self.avg_s = seconds if not self.avg_s else 0.8 * self.avg_s + 0.2 * seconds
        if outcome.ok:
            finish(self.consumer, commit, delivery, outcome.result or {}, output=self._output)
        else:
            commit.fail(delivery, outcome.reason)

    # -- the inline loop: one thread starts the commands, watches them in one selector and commits ----------------

    def _run_inline(self) -> None:
        """The loop of `run` for commands run by this process: up to `slots` children at once, each watched by its
        pipes and pidfd in one selector (no thread per item, no queue hop per result). This thread never waits
        for Redis: the IO thread (process_io.ProcessIo) reads ahead, holds and applies the batched commits. When a
        command exits, the next one starts first; the exited one's outcome is taken after that, and the next
        items' files are prepared (core.command.prepare), while the new one runs. (Preparing on the IO thread
        instead was no faster on a loaded 2-core machine, often slower: its Python work between file system calls
        contends for the GIL while commands start and end.)"""
        ctx = self.ctx
        self.consumer = c = StreamConsumer(ctx.client, ctx.settings, stage=ctx.stage, input_stream=ctx.work.input,
                                           retry=retry_policy(ctx.pipeline, ctx.stage))
        self.processing = core_metrics.PROCESSING.labels(**self.labels)
        unheld: dict[bytes, Delivery] = {}  # _settle's bookkeeping is the pool path's: here the IO thread's
        running: dict[Child, Delivery] = {}
        exited: list[tuple[Child, Delivery]] = []  # exited, their outcome not taken yet
        commit, first_result = Commit(), 0.0
        workers = core_metrics.WORKERS.labels(**self.labels)
        workers.set(self.slots)
        self._base_env = command_env()  # the same for every item: computed once, not per spawn
        self._out_root = os.fspath(ctx.out_dir)  # resolved once, not per item
        selector = selectors.DefaultSelector()
        io = ProcessIo(c, self, self.commit, f"bm-{ctx.stage}-io")
        selector.register(io.wake, selectors.EVENT_READ, None)
        read = io.ready
        ready: deque[tuple[Delivery, Prepared | Outcome]] = deque()  # prepared (or already failed), not started

        def settle(delivery: Delivery, outcome: Outcome, seconds: float) -> None:
            nonlocal first_result
            self._settle(commit, unheld, (delivery, outcome, seconds))
            first_result = first_result or time.monotonic()

        def start() -> None:
            """Fill the free slots, then prepare the next items while those run."""
            while len(running) < self.slots and (ready or read):
                delivery, prepared = ready.popleft() if ready else self._prepare(read.popleft())
                if isinstance(prepared, Outcome):  # its files could not be made: a failed attempt
                    settle(delivery, prepared, 0.0)
                    continue
                try:
                    child = Child(self.argv, prepared, timeout=ctx.work.timeout)
                except OSError as exc:
                    prepared.discard()
                    settle(delivery, Outcome(False, reason=f"cannot start {self.argv[0]!r}: "
                                                           f"{exc.strerror or exc}"), 0.0)
                    continue
                running[child] = delivery
                for fd in child.fds:
                    selector.register(fd, selectors.EVENT_READ, child)

        def end(child: Child, delivery: Delivery) -> None:
            for fd in child.open:
                selector.unregister(fd)
            outcome = child.outcome()
            # its own run time (spawn to exit), not how soon this loop came back to it: sizes the read-ahead
            settle(delivery, outcome, (child.exited or time.perf_counter()) - child.started)

        def watch(timeout: float, refill: bool = True) -> None:
            for key, _ in selector.select(timeout):
                child = key.data
                if child is None:
                    io.drain()
                elif child in running and child.feed(key.fd):
                    selector.unregister(key.fd)
                    if child.finished:  # its slot is free: the next command starts before this one's outcome
                        exited.append((child, running.pop(child)))
            now = time.monotonic()
            for child in [ch for ch in running if ch.deadline <= now]:
                end(child, running.pop(child))  # timed out: killed with its group
            if refill:
                start()
            while exited:
                end(*exited.pop())
            while refill and read and len(ready) < self.slots:
                ready.append(self._prepare(read.popleft()))

        try:
            while not self.stopping.is_set():
                io.check()  # a failed Redis call (an outage) ends the loop here: run() starts over
                start()
                now = time.monotonic()
                if commit and (not running or commit.completed + len(commit.retries) >= self.read_ahead()
                               or now - first_result >= FLUSH_AFTER_S):
                    io.put(commit)  # committed on the IO thread: the next command does not wait for Redis
                    commit, first_result = Commit(), 0.0
                wait = IDLE_WAIT_S
                if commit:
                    wait = min(wait, first_result + FLUSH_AFTER_S - now)
                if running:
                    wait = min(wait, min(ch.deadline for ch in running) - now)
                watch(max(0.0, wait))
        finally:
            # Items not started stay pending in the stream (a restarted manager reclaims them); running ones end.
            for _, prepared in ready:
                if isinstance(prepared, Prepared):
                    prepared.discard()
            while running:
                watch(max(0.0, min(ch.deadline for ch in running) - time.monotonic()), refill=False)
            selector.close()
            io.put(commit)
            io.close()
            workers.set(0)

    def _hold(self, batch: list[Delivery], held: dict[bytes, Delivery], commit: Commit) -> list[Delivery]:
        started = []
        for delivery in batch:
            if delivery.item is None:
                commit.dead_letter(delivery, delivery.malformed or "malformed item")
                continue
            started.append(delivery)
        self.consumer.held.hold(self.consumer, started)  # running, and indexed should an entry be deleted
        for delivery in started:
            held[delivery.entry_id] = delivery
        return started

    def _prepare(self, delivery: Delivery) -> tuple[Delivery, Prepared | Outcome]:
        item = delivery.item
        assert item is not None
        try:
            return delivery, prepare(item, f"{self._out_root}/{item.dirname}", self.env, base=self._base_env)
        except Exception as exc:  # e.g. the output dir cannot be written: a failed attempt, not a crash
            return delivery, Outcome(False, reason=failure_reason(exc))
