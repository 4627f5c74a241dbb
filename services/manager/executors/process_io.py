"""The Redis side of the process executor's inline loop, on a thread of its own: every call of the stage's consumer
(reads, holds, heartbeats, the retry poll, the batched commits), so the thread that starts the commands never
waits for a reply: it sees a command's exit when it happens and starts the next one (a reply it waited for used
to come back after the command it had just started had exited).

This thread reads ahead by itself (`Sizing`: up to `slots + ahead` entries in hand, another read once half of
that is used up; after a read that came back short, the next no sooner than POLL_S while entries are in hand, a
blocking read when none are) and holds what it read (core.held: marked running and indexed) before appending it
to `ready`, which the loop pops: no commit can come before its hold. The loop hands over batches of outcomes
(`put`: applied in order, before the next read). A byte on `wake` wakes the loop's selector when `ready` was
empty, and on an error.

What this thread holds in hand (`in_flight`: read and not committed yet: waiting, running, or settled and on its
way to a commit) is heartbeated (XCLAIM JUSTID every third of the visibility timeout), so neither this
consumer's own reclaim nor another manager's takes away an item whose outcome is on its way; and since this
consumer's reclaims run on this thread, after the commits handed over before them, one can only return an entry
still in hand, which is then dropped from that read, not run a second time. A failed call ends the thread:
nothing after it is applied (those items stay pending and are reclaimed, as when the loop itself fails), and its
error is raised in the loop by `check` and by `close`."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from services.core import Commit, Delivery, StreamConsumer

POLL_S = 0.01  # after a read came back short, the stream is read again no sooner than this (while items are in hand)


class Sizing(Protocol):
    slots: int

    def read_ahead(self) -> int: ...


class ProcessIo:
    def __init__(self, consumer: StreamConsumer, sizing: Sizing, apply: Callable[[Commit], None], name: str) -> None:
        """`apply`: how a batch of outcomes is committed (ProcessExecutor.commit)."""
        self.consumer, self.sizing, self.apply = consumer, sizing, apply
        self.ready: deque[Delivery] = deque()  # read and held: the loop pops from the left, this thread appends
        self.error: BaseException | None = None
        self.in_flight: dict[bytes, None] = {}  # entry ids read and not committed yet
        self._cond = threading.Condition()
        self._commits: list[Commit] = []
        self._closing = False
        self.wake, self._wake_w = os.pipe()
        os.set_blocking(self.wake, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # -- the loop's side -------------------------------------------------------------------------------------

    def put(self, commit: Commit) -> None:
        """Commit this batch of outcomes, after those handed over before it."""
        if commit:
            with self._cond:
                self._commits.append(commit)
                self._cond.notify()

    def drain(self) -> None:
        """Empty `wake` (the loop's selector found it readable)."""
        try:
            os.read(self.wake, 4096)
        except BlockingIOError:
            pass

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Apply what was handed over, stop the thread, raise a failed call's error. Entries read and not started
        stay pending in the stream: a restarted manager reclaims them."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        os.close(self.wake)
        os.close(self._wake_w)
        self.check()

    # -- this thread ---------------------------------------------------------------------------------------------

    def _main(self) -> None:
        c = self.consumer
        beat_every = c.settings.visibility_timeout_ms / 3000
        now = time.monotonic()
        next_beat, next_read = now + beat_every, 0.0
        try:
            while True:
                with self._cond:
                    while not (self._commits or self._closing):
                        now = time.monotonic()
                        due = min(next_beat, next_read if self._read_wanted() else next_beat)
                        if due <= now:
                            break
                        self._cond.wait(due - now)
                    commits, self._commits = self._commits, []
                    closing = self._closing
                for commit in commits:
                    self.apply(commit)
                    self._committed(commit)
                if closing:
                    with self._cond:
                        if not self._commits:
                            return
                    continue
                now = time.monotonic()
                if self._read_wanted() and now >= next_read:
                    if self._read():
                        next_read = now + POLL_S if self.in_flight else 0.0
                    else:
                        next_read = 0.0
                c.heartbeat()  # this consumer is alive (at most once a second), also while no read is due
                if now >= next_beat:
                    if self.in_flight:  # reset their idle time; JUSTID leaves the delivery count alone
                        c.client.xclaim(c.stream_key, c.group, c.consumer, min_idle_time=0,
                                        message_ids=list(self.in_flight), justid=True)
                    next_beat = now + beat_every
        except BaseException as exc:  # raised in the loop's thread
            self.error = exc
            self._wake()

    def _read_wanted(self) -> bool:
        """Half the read-ahead is used up (what is in hand counts until its commit is applied)."""
        slots, ahead = self.sizing.slots, self.sizing.read_ahead()
        return len(self.in_flight) <= slots + ahead // 2

    def _read(self) -> bool:
        """One read of new (or reclaimed) entries, held. True when it came back short."""
        c = self.consumer
        count = max(1, self.sizing.slots + self.sizing.read_ahead() - len(self.in_flight))  # sizing moves meanwhile
        # Nothing in hand: nothing to commit or prepare can come while the read waits for entries (block_ms).
        batch = c.read(count=count, block_ms=None if not self.in_flight else 0)
        good, dead = [], Commit()
        for delivery in batch:
            if delivery.entry_id in self.in_flight:
                continue  # reclaimed from ourselves while its outcome is on its way: it must not run twice
            if delivery.item is None:
                dead.dead_letter(delivery, delivery.malformed or "malformed item")
            else:
                good.append(delivery)
        if dead:
            self.apply(dead)
        c.held.hold(c, good)  # running, and indexed should an entry be deleted: before the loop may settle them
        for delivery in good:
            self.in_flight[delivery.entry_id] = None
        starving = not self.ready
        self.ready.extend(good)
        if starving and good:
            self._wake()
        return len(batch) < count

    def _committed(self, commit: Commit) -> None:
        for entry_id in commit.acks:
            self.in_flight.pop(entry_id, None)
        for delivery, _ in (*commit.retries, *commit.dead):
            self.in_flight.pop(delivery.entry_id, None)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b".")
        except BlockingIOError:  # the pipe is full: the loop has a wake-up pending anyway
            pass
