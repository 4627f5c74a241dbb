"""When the manager lists the source and starts a batch (once at start, then by the pipeline's `schedule`):

- on new items (default): every `source.poll` seconds; a listing that finds new work is a batch;
- cron: at each tick a new batch, even an empty one — unless the previous batch is still running: then the tick
  is skipped (runs never overlap), and one manager of several takes a tick (a lock in Redis per tick);
- after another pipeline: when one of its barriers emits a batch-complete event; events that come while a batch
  runs start one batch once it is done. The cursor into the other pipeline's events is kept in Redis, so a
  restarted manager neither misses an event nor starts a batch twice for one."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter
from prometheus_client import Counter
from redis import Redis

from services.core import Keys
from services.core.spec import Pipeline

log = logging.getLogger(__name__)

SKIPPED = Counter("batchmesh_schedule_skipped", "Scheduled batches not started: the previous one still ran",
                  ("pipeline",))
POLL, BATCH = "poll", "batch"  # a listing whose new work (if any) is a batch; a listing that is a batch anyway
CHECK_S = 1.0  # how often the events of the pipeline we run after are looked at


class Schedule:
    def __init__(self, client: Redis, pipeline: Pipeline, batch_running: Callable[[], bool]) -> None:
        self.client, self.pipeline, self.batch_running = client, pipeline, batch_running
        self.keys = Keys(pipeline.name)
        spec = pipeline.schedule
        self.cron = croniter(spec.cron, datetime.now(UTC)) if spec.cron else None
        self.after = spec.after
        self._next = time.time()  # the first listing is due at once
        self._first = True
        if self.after is not None:
            self._events = Keys(self.after.pipeline).events()
            cursor = self.client.hget(self.keys.schedule(), "after_cursor")
            if cursor is None:  # first start: only events from now on
                last = self.client.xrevrange(self._events, count=1)
                cursor = last[0][0] if last else b"0-0"
                self.client.hset(self.keys.schedule(), "after_cursor", cursor)
            self._cursor = cursor

    def due(self) -> str | None:
        """What to do now: POLL, BATCH or None (nothing yet)."""
        now = time.time()
        if self._first:
            self._first = False
            self._next = self._following(now)
            return BATCH
        if now < self._next:
            return None
        if self.cron is None and self.after is None:
            self._next = now + self.pipeline.source.poll
            return POLL
        if self.after is not None:
            self._next = now + CHECK_S
            self._new_events()
            if not self.client.hexists(self.keys.schedule(), "after_pending") or self.batch_running():
                return None
            self.client.hdel(self.keys.schedule(), "after_pending")
            return BATCH
        tick = self._next
        self._next = self._following(now)
        if self.batch_running():
            SKIPPED.labels(self.pipeline.name).inc()
            log.warning("scheduled batch skipped: the previous batch is still running", extra={
                "event": "schedule.skipped", "tick": tick})
            return None
        lock = f"{self.keys.schedule()}:tick:{int(tick)}"
        if not self.client.set(lock, 1, nx=True, ex=max(int(self._next - now) + 60, 60)):
            return None  # another manager took this tick
        return BATCH

    def wait_s(self) -> float:
        return max(0.0, self._next - time.time())

    def _following(self, now: float) -> float:
        if self.cron is not None:
            self.cron.set_current(datetime.fromtimestamp(now, UTC))
            return float(self.cron.get_next(float))
        if self.after is not None:
            return now + CHECK_S
        return now + self.pipeline.source.poll

    def _new_events(self) -> bool:
        """Consume the other pipeline's events since the cursor; True if one of them is ours to follow."""
        rows = self.client.xrange(self._events, min=f"({self._cursor.decode()}", count=1000)
        if not rows:
            return False
        self._cursor = rows[-1][0]
        wanted = self.after.stage if self.after else None
        found = any(wanted is None or _stage_of(fields) == wanted for _, fields in rows)
        pipe = self.client.pipeline(transaction=True)  # the cursor moves only with the trigger it found
        pipe.hset(self.keys.schedule(), "after_cursor", self._cursor)
        if found:
            pipe.hset(self.keys.schedule(), "after_pending", 1)
        pipe.execute()
        return found


def _stage_of(fields: dict[bytes, bytes]) -> str | None:
    try:
        return json.loads(fields.get(b"event", b"{}")).get("stage")
    except (ValueError, AttributeError):
        return None
