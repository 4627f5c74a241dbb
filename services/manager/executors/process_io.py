"""What the process executor's inline loop would otherwise wait for, on a thread of its own: every Redis call of the
stage's consumer (reads, holds, heartbeats, the retry poll, the batched commits) and the preparation of the items'
files (core.command.prepare: WORK_OUTPUT_DIR, the private WORK_ITEM_FILE). So the thread that starts the commands
never waits for a reply or a file system call: it sees a command's exit when it happens and starts the next one.

This thread reads ahead by itself (`Sizing`: up to `slots + ahead` entries in hand, another read once half of
that is used up; after a read that came back short, the next no sooner than POLL_S while items are in hand, a
blocking read when none are), holds what it read (core.held: marked running and indexed, before the loop can
settle it) and keeps `ready` filled with up to `depth` prepared items, which the loop pops. The loop hands over
batches of outcomes (`put`: applied in order) and pokes this thread when it has used up half of `ready`; a byte on
`wake` wakes the loop's selector when `ready` was empty, and on an error.

What this thread holds in hand (`in_flight`: read and not committed yet: waiting, prepared, running, or settled
and on its way to a commit) is heartbeated (XCLAIM JUSTID every third of the visibility timeout), so neither
this consumer's own reclaim nor another manager's takes away an item whose outcome is on its way; should a Redis
stall still let this consumer's reclaim return one of them, it is dropped from that read, not run a second time.
A failed call ends the thread: nothing after it is applied (those items stay pending and are reclaimed, as when
the loop itself fails), and its error is raised in the loop by `check` and by `close`."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from services.core import Commit, Delivery, StreamConsumer
from services.core.command import Outcome, Prepared

POLL_S = 0.01  # after a read came back short, the stream is read again no sooner than this (while items are in hand)

Ready = tuple[Delivery, Prepared | Outcome]


class Sizing(Protocol):
    slots: int

    def read_ahead(self) -> int: ...


class ProcessIo:
    def __init__(self, consumer: StreamConsumer, sizing: Sizing, apply: Callable[[Commit], None],
                 prepare: Callable[[Delivery], Ready], name: str) -> None:
        """`apply`: how a batch of outcomes is committed (ProcessExecutor.commit); `prepare`: an item's files."""
        self.consumer, self.sizing, self.apply, self.prepare = consumer, sizing, apply, prepare
        self.depth = 2 * sizing.slots + 2  # prepared items kept ready for the loop
        self.ready: deque[Ready] = deque()  # the loop pops from the left; this thread appends on the right
        self.error: BaseException | None = None
        self.in_flight: dict[bytes, None] = {}  # entry ids read and not committed yet
        self._waiting: deque[Delivery] = deque()  # read and held, not prepared yet
        self._cond = threading.Condition()
        self._commits: list[Commit] = []
        self._poked = self._closing = False
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

    def poke(self) -> None:
        """The loop has used up half of `ready`: prepare more."""
        with self._cond:
            self._poked = True
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
        """Apply what was handed over, stop the thread, remove the item files of prepared items not started (they
        stay pending in the stream: reclaimed by a restarted manager), raise a failed call's error."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        while self.ready:
            _, prepared = self.ready.popleft()
            if isinstance(prepared, Prepared):
                prepared.discard()
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
                    while not (self._commits or self._closing or self._poked):
                        now = time.monotonic()
                        due = min(next_beat, next_read if self._read_wanted() else next_beat)
                        if (self._waiting and len(self.ready) < self.depth) or due <= now:
                            break
                        self._cond.wait(due - now)
                    commits, self._commits = self._commits, []
                    closing, self._poked = self._closing, False
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
                self._prepare()
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
        count = self.sizing.slots + self.sizing.read_ahead() - len(self.in_flight)
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
        self._waiting.extend(good)
        return len(batch) < count

    def _prepare(self) -> None:
        while self._waiting and len(self.ready) < self.depth:
            starving = not self.ready
            self.ready.append(self.prepare(self._waiting.popleft()))
            if starving:
                self._wake()

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
