"""The stage timeout for in-process workers. A command is killed at `work.timeout` (core.command), but a Python
function cannot be stopped from outside its thread: one that hangs would keep its entries leased (workers.lease)
for ever, and the stage would never finish. So while a chain with in-process adapters runs an item, a watchdog
thread checks every second; an item in hand longer than the timeout (plus WATCHDOG_GRACE_S) makes the worker log
it and exit with EXIT_HUNG, uncommitted. Its entries are then reclaimed like any dead consumer's, one at a time
(core.stage, isolate_reclaimed), so only the hanging item's delivery count goes up; past max_deliveries it is
dead-lettered, and the supervisor (or Kubernetes) restarts the worker meanwhile."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_HUNG = 70  # EX_SOFTWARE
WATCHDOG_GRACE_S = 1.0


class Watchdog:
    def __init__(self, timeout_s: float, stage: str, exit: Callable[[int], None] = os._exit) -> None:
        self.timeout_s, self.stage, self._exit = timeout_s + WATCHDOG_GRACE_S, stage, exit
        self._started: dict[int, tuple[float, str]] = {}  # thread id -> (monotonic start, item id)
        self._solo: tuple[float, str] | None = None  # the loop thread's item (`track`): (perf_counter start, id)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watchdog-{stage}", daemon=True)
        self._thread.start()

    def begin(self, item_id: str) -> None:
        with self._lock:
            self._started[threading.get_ident()] = (time.monotonic(), item_id)

    def end(self) -> None:
        with self._lock:
            self._started.pop(threading.get_ident(), None)

    def track(self, started: float, item_id: str) -> None:
        """`begin` for the worker's own loop thread, without a lock: one slot, replaced whole (the GIL makes the
        assignment atomic), `started` from time.perf_counter. `track(..)` again for the next item; `untrack()`
        when the batch is done."""
        self._solo = (started, item_id)

    def untrack(self) -> None:
        self._solo = None

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._closed.wait(min(1.0, self.timeout_s / 4)):
            now = time.monotonic()
            with self._lock:
                late = [(item, now - began) for began, item in self._started.values() if now - began > self.timeout_s]
            solo = self._solo
            if solo is not None and time.perf_counter() - solo[0] > self.timeout_s:
                late.append((solo[1], time.perf_counter() - solo[0]))
            if late:
                item, seconds = late[0]
                log.error("an in-process worker exceeded the stage timeout; exiting so its entries are reclaimed",
                          extra={"event": "worker.hung", "stage": self.stage, "item": item,
                                 "seconds": round(seconds, 1), "timeout_s": self.timeout_s - WATCHDOG_GRACE_S})
                logging.shutdown()
                self._exit(EXIT_HUNG)
                return
