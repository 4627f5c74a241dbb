"""The `running` mark of a batch of in-process items, sent only if the batch is still at work after a short delay.

A no-op item takes microseconds: marking a batch of them `running` before it runs and `done` in its commit a
millisecond later costs Redis a state change per item (read the old state, write the new one) that nobody can
see, since progress is looked at (status, the manager) about once a second. So the worker arms a `DeferredMark`
when a batch starts, and a thread of its own sends the mark (core.held.running_command, on a connection of its
own) only if the batch is still running `delay_s` later; `settle()`, before the commit, says whether it was sent,
and the worker then reads its reply first, so the mark is applied before the commit marks the items done. A fast
batch goes from `queued` to `done` in its commit.

What the mark is not: it is not what keeps an item safe. The held index (core.held: the item kept while its entry
is pending) is written before the items run, as before, and a crash before or after the mark leaves the batch
pending, reclaimed and redone just the same. The mark keeps the terminal states (a mark that arrives late cannot
undo a done item), and the states the manager acts on treat `queued` and `running` alike (in flight).
Commands (chains with a command adapter) are marked up front: they take a process each, so never microseconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from redis import Redis

from services.core.held import HoldReply
from services.core.wire import Wire

DELAY_S = 0.02  # a batch still at work after this long is marked running (a no-op batch of 256 takes ~3 ms)

Command = tuple[object, ...]


class DeferredMark:
    """One worker's deferred `running` marks: `arm()` when a batch starts, `settle()` when its items are done.
    Both are called from the worker's loop thread; the mark is sent from this object's thread."""

    def __init__(self, client: Redis, stage: str, delay_s: float = DELAY_S) -> None:
        self.client, self.delay_s = client, delay_s
        self._cond = threading.Condition()
        self._armed: tuple[float, Callable[[], Command | None]] | None = None  # (deadline, the mark's command)
        self._sent: HoldReply | BaseException | None = None  # the armed batch's mark, once sent (or its error)
        self._idle = False  # the thread waits with no deadline: arming must wake it
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"mark-{stage}", daemon=True)
        self._thread.start()

    def arm(self, command: Callable[[], Command | None]) -> None:
        """A batch starts: `command()` (called on this object's thread, only if it is due) gives its mark."""
        with self._cond:
            self._armed, self._sent = (time.monotonic() + self.delay_s, command), None
            if self._idle:  # else the thread wakes at an earlier deadline anyway, and finds this one
                self._cond.notify()

    def settle(self) -> HoldReply | None:
        """The batch's items are done: no mark is sent from now on. Returns the mark's reply to read before the
        commit (HoldReply.wait), if it was sent; raises the error that sending it met, if any (the batch then
        stays uncommitted, pending, and is reclaimed: as when a hold fails)."""
        with self._cond:
            self._armed, sent, self._sent = None, self._sent, None
        if isinstance(sent, BaseException):
            raise sent
        return sent

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                armed = self._armed
                if armed is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                left = armed[0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._armed = None
                try:  # under the lock: settle() waits for the send to finish, then reads its reply
                    command = armed[1]()
                    if command is not None:
                        self._sent = HoldReply(Wire(self.client).send([command]))
                except Exception as exc:  # a connection error: the worker's loop raises it at settle()
                    self._sent = exc
