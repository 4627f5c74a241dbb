"""The stage runtime every role shares: read a batch with a consumer group, do something, then publish the
outputs and acknowledge the inputs in one MULTI/EXEC, so a crash between the two can neither lose nor
duplicate a routed message (the keys' types are checked first and the transaction is never re-sent: see
core.guard). Entries left pending by a dead consumer are reclaimed after a visibility timeout; an entry
delivered more than `max_deliveries` times goes to the stage's dead-letter stream with the reason. A failed
delivery waits for its retry in the stage's retry set, with backoff (core.retry); the items of entries deleted
while pending are recovered from the held index (core.held)."""

from __future__ import annotations

import logging
import os
import socket
import time

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from . import metrics
from .batch import Commit, Delivery
from .batch_decode import deliveries
from .deadletter import add_dead_letter
from .fast_commit import FastCommit, FastCommitCall, commit_completions
from .guard import CommitError, check_key_types, require_no_retry
from .held import Held
from .item import FIELD, TO
from .keys import Keys
from .progress import DEAD, DONE, FAILED, Progress
from .retry import RetryQueue, RetrySpec
from .rewind import create_group
from .settings import Settings
from .trim import DeadLetterCap, SafeTrim

log = logging.getLogger(__name__)

RETRY_POLL_S = 0.25  # how often a consumer looks for due retries when it knows of none due sooner


def _at_start(cursor: bytes | str) -> bool:
    """An XAUTOCLAIM cursor at the stream's start: a scan begins there, and one that returns it is complete."""
    return cursor in (b"0-0", "0-0")


class StreamConsumer:
    """One consumer of one stage's input stream (consumer group = stage name)."""

    def __init__(
        self,
        client: Redis,
        settings: Settings,
        *,
        stage: str,
        input_stream: str,
        consumer: str | None = None,
        retry: RetrySpec | None = None,
        isolate_reclaimed: bool = False,
    ) -> None:
        """`retry`: the backoff between deliveries of a failed item (core.retry; None = retry at once, as a bare
        consumer in a test does; the roles pass the spec's). `isolate_reclaimed`: reclaim one entry at a time, so
        an item that kills its process (a poison item in an in-process worker) takes only its own delivery count
        up, never that of good items read in the same batch."""
        require_no_retry(client)  # a re-sent commit would publish its outputs twice
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.pipeline)
        self.stage = stage
        self.stream_key = self.keys.stream(input_stream)
        self.group = stage
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.progress = Progress(client, self.keys)
        self.retry, self.isolate_reclaimed = retry, isolate_reclaimed
        self.retries = RetryQueue(client, self.keys, stage, self.stream_key)
        self.held = Held(client, self.keys, stage)
        self._fast = FastCommit(client, [self.stream_key, self.keys.states(), self.keys.counts(), self.keys.derived(),
                                         self.held.key, self.keys.results(), self.keys.stage_stats(stage),
                                         self.keys.arrivals()], self.group, self.consumer)
        self._next_move, self._due_at = 0.0, None  # next look at the retry set; when a retry is known due
        self._trim = SafeTrim(client)
        self._cap_dead = DeadLetterCap(client, self.keys, stage, settings.dead_letter_maxlen)
        self._reclaim_cursor: bytes | str = b"0-0"
        self._next_reclaim = 0.0
        self._reclaimed_last = False  # the last read() returned reclaimed entries: the next one reads new ones
        self._left: list[Delivery] = []  # read ahead by the last commit: what the next read() returns
        self.read_next = 0  # how many new entries the next completions-only commit reads ahead (see commit)
        self._next_trim = 0.0
        self._next_beat = 0.0
        labels = {"pipeline": settings.pipeline, "stage": stage}
        self.m_in, self.m_out = metrics.ITEMS_IN.labels(**labels), metrics.ITEMS_OUT.labels(**labels)
        self.m_failed, self.m_dead = metrics.ITEMS_FAILED.labels(**labels), metrics.ITEMS_DEAD.labels(**labels)
        self.m_reclaimed = metrics.ITEMS_RECLAIMED.labels(**labels)
        self.m_lost, self.m_backlog = metrics.ITEMS_LOST.labels(**labels), metrics.BACKLOG.labels(**labels)
        self.ensure_group()

    def ensure_group(self) -> None:
        """Create the group unless it exists; a group re-created over entries skips the finished items' entries
        and hands the rest to the next reclaim (core.rewind)."""
        if create_group(self.client, self.keys, self.stream_key, self.group) is not None:
            self._next_reclaim = 0.0

    def heartbeat(self) -> None:
        """Tell the manager this consumer is alive (batchmesh_stage_consumers): at most every third of the
        visibility timeout (and every second), the window in which the manager counts a consumer alive."""
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + min(1.0, self.settings.visibility_timeout_ms / 3000)
            self.client.zadd(self.keys.alive(self.stage), {self.consumer: time.time()})

    def forget(self) -> None:
        """This consumer stops: no longer counted alive (best effort)."""
        try:
            self.client.zrem(self.keys.alive(self.stage), self.consumer)
        except RedisError:
            pass

    def _nogroup(self, exc: ResponseError) -> None:
        """The group vanished (a Redis restarted from an older AOF, or without one): make it again (core.rewind)."""
        if "NOGROUP" not in str(exc):
            raise exc
        log.warning("consumer group vanished; re-creating it", extra={
            "event": "stage.nogroup", "stage": self.stage, "stream": self.stream_key})
        self.ensure_group()
        self._reclaim_cursor = b"0-0"

    # -- reading -------------------------------------------------------------------------------------------

    def read(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        """Entries to process: reclaimed ones first when a reclaim is due, else new ones (blocking).

        A reclaim is due every half visibility timeout; a reclaim scan that stopped part-way (non-zero cursor)
        goes on at the next read. A read that returned reclaimed entries is always followed by one that reads
        new entries, so a stream of reclaimable entries (slow batches) can never starve new ones."""
        self.heartbeat()
        if self._left:  # read ahead by a commit that was then refused (StaleCommit)
            left, self._left = self._left, []
            return left
        now = time.monotonic()
        due_in = self._move_due(now)
        if now >= self._next_reclaim and not self._reclaimed_last:
            reclaimed = self.reclaim(1 if self.isolate_reclaimed else count)
            scan_done = not self._scanning()
            self._next_reclaim = now + max(self.settings.visibility_timeout_ms / 2000, 0.05) if scan_done else now
            if reclaimed:
                self._reclaimed_last = True
                return reclaimed
        self._reclaimed_last = False
        block = self.settings.block_ms if block_ms is None else block_ms
        if self._scanning():
            block = 0  # a reclaim scan is under way: look for new entries without waiting, then go on with it
        elif block and due_in is not None:
            block = max(1, min(block, int(due_in * 1000) + 1))  # wake up when the next retry is due
        try:
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream_key: ">"},
                                           count=count or self.settings.batch_size, block=block or None)
        except ResponseError as exc:
            self._nogroup(exc)
            return []
        batch = deliveries(self._ours(reply[0][1]), {}) if reply else []
        self.m_in.inc(len(batch))
        return batch

    def can_read_ahead(self) -> bool:
        """True when the next `read()` would be a plain read of new entries (no reclaim due or under way), so a
        commit may fold it in (`commit(..., read_next=n)`). Keeps the heartbeat and the retry mover going."""
        self.heartbeat()
        now = time.monotonic()
        self._move_due(now)
        return not self._scanning() and (now < self._next_reclaim or self._reclaimed_last)

    def _scanning(self) -> bool:
        """A reclaim scan stopped part-way (its cursor is not back at the start): the next read goes on with it."""
        return not _at_start(self._reclaim_cursor)

    def has_read_ahead(self) -> bool:
        """True while entries read ahead by a commit wait for the next read()."""
        return bool(self._left)

    def _move_due(self, now: float) -> float | None:
        """Put the stage's due retries back on the stream (core.retry), at most every RETRY_POLL_S unless one is
        due sooner. Returns seconds until the next retry is known to be due (None: none is known to wait)."""
        if now >= self._next_move:
            _, wait = self.retries.move_due()
            self._due_at = None if wait is None else now + wait
            self._next_move = now + (RETRY_POLL_S if wait is None else min(wait, RETRY_POLL_S))
        return None if self._due_at is None else max(self._due_at - now, 0.0)

    def read_new_fields(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]] | None:
        """A non-blocking read of new entries, left undecoded, for a role that decodes them itself (a reduce under
        a backlog: services.router.barrier_read): [(entry id, fields)] of the entries for this stage (delivered
        once, so each one's deliveries = its item's attempts + 1). None, reading nothing, when the next `read()`
        would not be a plain read of new entries (a reclaim due or under way): call `read()` then."""
        if not self.can_read_ahead() or self._left:  # entries read ahead by a refused commit go first, via read()
            return None
        self._reclaimed_last = False
        try:
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream_key: ">"}, count=count)
        except ResponseError as exc:
            self._nogroup(exc)
            return []
        entries = self._ours(reply[0][1]) if reply else []
        self.m_in.inc(len(entries))
        return entries

    def _ours(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Drop (and acknowledge) entries addressed to another stage: retries and replays of a stream's other
        readers, which must not run here a second time."""
        group = self.group.encode()
        foreign = [entry_id for entry_id, fields in entries if fields.get(TO, group) != group]
        if not foreign:
            return entries
        self.client.xack(self.stream_key, self.group, *foreign)
        skip = set(foreign)
        return [(entry_id, fields) for entry_id, fields in entries if entry_id not in skip]

    def reclaim(self, count: int | None = None) -> list[Delivery]:
        """XAUTOCLAIM entries idle past the visibility timeout, resuming from the last cursor.

        A call may return nothing while the cursor is non-zero (it scanned only part of the pending list), so
        the cursor is kept between calls. Entries deleted while pending come back as nil without their id
        (Redis 6.2): their ids are found in our pending list and acknowledged, since nothing is left to do. Redis
        7 drops them from the pending list itself and lists their ids in a third element of the reply. Either
        way they are counted and logged as lost."""
        start = self._reclaim_cursor
        if _at_start(start):  # a scan begins: now and then, orphans of lost entries too (core.held)
            self.held.maybe_sweep(self.stream_key, self.group)
        try:
            reply = self.client.xautoclaim(
                self.stream_key, self.group, self.consumer, self.settings.visibility_timeout_ms,
                start_id=start, count=count or self.settings.batch_size,
            )
        except ResponseError as exc:
            self._nogroup(exc)
            return []
        cursor, claimed = reply[0], reply[1]
        self._reclaim_cursor = cursor
        if len(reply) > 2 and reply[2]:  # Redis >= 7 drops deleted entries from the pending list itself
            self._count_lost(reply[2])
        if not claimed:
            return []
        # Delivery counts per claimed id (exact ranges: this consumer may hold other entries still in flight).
        pipe = self.client.pipeline(transaction=False)
        live = [(entry_id, fields) for entry_id, fields in claimed if entry_id is not None]
        for entry_id, _ in live:
            pipe.xpending_range(self.stream_key, self.group, min=entry_id, max=entry_id, count=1)
        times = {rows[0]["message_id"]: rows[0]["times_delivered"] for rows in pipe.execute() if rows}
        lost = self._lost(start, cursor, {e for e, _ in live}) if len(live) < len(claimed) else []
        if lost:
            self._count_lost(lost, still_pending=True)
        batch = deliveries(self._ours(live), times, 2)
        self.m_reclaimed.inc(len(batch))
        self.m_in.inc(len(batch))
        return self._cap_deliveries(batch)

    def _count_lost(self, entry_ids: list[bytes], still_pending: bool = False) -> None:
        """Entries deleted (XDEL, an outside MAXLEN) while pending: their items (core.held) are retried or dead-
        lettered with the reason. `still_pending` (6.2: nil claims stay in our pending list): acknowledged by the
        retry's commit, in its MULTI; those without a held item apart."""
        self.m_lost.inc(len(entry_ids))
        log.warning("pending entries were deleted before processing", extra={
            "event": "stage.lost", "stage": self.stage, "count": len(entry_ids)})
        found = self.held.recover(self, entry_ids, still_pending=still_pending)
        if still_pending and (rest := [e for e in entry_ids if e not in found]):
            self.client.xack(self.stream_key, self.group, *rest)

    def _lost(self, start: bytes | str, cursor: bytes | str, live: set[bytes]) -> list[bytes]:
        """Ids of entries the claim returned as nil: ours now, in the scanned range, gone from the stream."""
        end = "+" if _at_start(cursor) else "(" + (cursor.decode() if isinstance(cursor, bytes) else cursor)
        rows = self.client.xpending_range(self.stream_key, self.group, min=start, max=end, count=100_000,
                                          consumername=self.consumer)
        candidates = [r["message_id"] for r in rows if r["message_id"] not in live]
        pipe = self.client.pipeline(transaction=False)
        for entry_id in candidates:
            pipe.xrange(self.stream_key, min=entry_id, max=entry_id, count=1)
        return [entry_id for entry_id, found in zip(candidates, pipe.execute(), strict=True) if not found]

    def _cap_deliveries(self, batch: list[Delivery]) -> list[Delivery]:
        """Dead-letter reclaimed entries past the delivery cap (a poison item that kills its consumer)."""
        over = [d for d in batch if d.deliveries > self.settings.max_deliveries]
        if over:
            commit = Commit()
            for d in over:
                commit.dead_letter(d, f"delivered {d.deliveries - 1} times without acknowledgement: the consumer "
                                      "died or exceeded the visibility timeout")
            self.commit(commit)
        return [d for d in batch if d.deliveries <= self.settings.max_deliveries]

    # -- committing ----------------------------------------------------------------------------------------

    def commit(self, commit: Commit) -> None:
        """Apply a batch's outcome atomically: outputs, acks, retries, dead letters, progress, extra actions.

        The usual outcome (completions only) is one script call (core.fast_commit). With `read_next` set (> 0,
        only when `can_read_ahead()`; reset by every commit), up to that many new entries are read right after
        it, in the same round trip, and the next read() returns them. So a refused commit leaves them for the
        next read() too; after a connection loss they stay pending and are reclaimed like the batch."""
        read_next, self.read_next = self.read_next, 0
        if not commit:
            return
        if not (commit.retries or commit.dead or commit.actions):
            commit_completions(self, commit, read_next)
            return
        pipe = self.client.pipeline(transaction=True)
        added: dict[str, int] = {}  # stream key -> entries this commit adds (the arrivals counters)
        for stream, item in commit.outputs:
            key = self.keys.stream(stream)
            pipe.xadd(key, item.encode())
            added[key] = added.get(key, 0) + 1
        acks = list(commit.acks)
        dead = list(commit.dead)
        retried_ids = []
        now = time.monotonic()
        for delivery, reason in commit.retries:
            if delivery.item is None or delivery.deliveries >= self.settings.max_deliveries:
                dead.append((delivery, reason))
                continue
            # A retry is a new entry carrying the attempt count, so the cap holds across re-deliveries.
            # It is addressed to this stage: the other stages reading the same stream already had the item.
            retry = delivery.item.model_copy(update={"attempts": delivery.deliveries, "error": reason[-2000:]})
            delay = self.retry.delay(delivery.deliveries) if self.retry is not None else 0.0
            if delay > 0:  # waits in the retry set until due (core.retry), acknowledged in this same commit
                self.retries.schedule(pipe, retry.encode()[FIELD], delay)
                self._next_move = min(self._next_move, now + delay)
                self._due_at = min(self._due_at or now + delay, now + delay)
            else:
                pipe.xadd(self.stream_key, {**retry.encode(), TO: self.group.encode()})
                added[self.stream_key] = added.get(self.stream_key, 0) + 1
            acks.append(delivery.entry_id)
            retried_ids.append(delivery.item.id)
        for delivery, reason in dead:
            acks.append(delivery.entry_id)
            add_dead_letter(pipe, self.keys, stage=self.stage, stream=self.stream_key, raw_item=delivery.raw,
                            reason=reason, deliveries=delivery.deliveries)
        if acks:
            if live := [a for a in acks if a not in commit.gone]:
                pipe.xack(self.stream_key, self.group, *live)
            self.held.release(pipe, acks)
        for key, n in added.items():
            pipe.hincrby(self.keys.arrivals(), key, n)
        stats = self.keys.stage_stats(self.stage)
        for name, n in (("out", commit.completed), ("failed", len(commit.retries)), ("dead", len(dead))):
            if n:
                pipe.hincrby(stats, name, n)
        for name, n in commit.stats:
            pipe.hincrby(stats, name, n)
        self.progress.mark(retried_ids, FAILED, pipe=pipe)
        if commit.sink_results:  # one HSET and one state change for the whole batch, not one per item
            pipe.hset(self.keys.results(), mapping=commit.sink_results)
            self.progress.mark(list(commit.sink_results), DONE, pipe=pipe)
        self.progress.mark([d.item.id for d, _ in dead if d.item is not None], DEAD, pipe=pipe)
        for action in commit.actions:
            action(pipe)
        self._execute(pipe)
        self.m_out.inc(commit.completed)
        self.m_failed.inc(len(commit.retries))
        self.m_dead.inc(len(dead))
        for delivery, reason in dead:
            log.warning("dead-lettered", extra={"event": "item.dead", "stage": self.stage, "reason": reason[-300:],
                                               "item": delivery.item.id if delivery.item else None})
        self.maybe_trim()

    def _execute(self, pipe: Pipeline | FastCommitCall) -> None:
        """EXEC, all or nothing. MULTI has no rollback: a command failing at EXEC time (WRONGTYPE) fails alone
        while the rest is applied, so the keys' types are checked first (see core.guard). A queueing error
        aborts the whole transaction, so nothing was written then either. A FastCommitCall checks the same inside
        its script (core.fast_commit) and its refusals are raised here the same way."""
        if isinstance(pipe, FastCommitCall):
            pipe.execute(self.stage)
            return
        check_key_types(self.client, pipe.command_stack, self.consumer)  # and the acked entries still ours
        try:
            results = pipe.execute(raise_on_error=False)
        except ResponseError as exc:
            raise CommitError(f"transaction aborted, nothing was committed: {exc}", partial=False) from exc
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            log.error("commit partially applied", extra={"event": "stage.partial_commit", "stage": self.stage,
                                                         "error": str(errors[0])})
            raise CommitError(f"commit partially applied ({len(errors)} of {len(results)} commands failed): "
                              f"{errors[0]}", partial=True)

    def maybe_trim(self, every_s: float = 1.0) -> None:
        """Trim acknowledged entries, at most every `every_s`. Best effort: a failure here must not make a
        commit that already succeeded look failed."""
        now = time.monotonic()
        if now >= self._next_trim:
            self._next_trim = now + every_s
            try:
                self.heartbeat()
                self._trim(self.stream_key)
                self._cap_dead()  # the dead-letter policy (core.trim.DeadLetterCap)
                self.m_backlog.set(self.client.xlen(self.stream_key))
            except RedisError as exc:
                log.warning("trim failed", extra={"event": "stage.trim_failed", "stage": self.stage,
                                                  "error": str(exc)})
