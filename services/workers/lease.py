"""Keeps the entries a worker is processing from being reclaimed by another replica while it still works on them.

Core reclaims entries idle past the visibility timeout, which is right for a crashed consumer but wrong for a live
one whose batch of slow commands takes longer than that: the items would run twice, and past the delivery cap be
dead-lettered while still being processed. So while a batch is in flight a thread renews it every third of the
timeout: XCLAIM ... JUSTID resets an entry's idle time without counting a delivery. Only entries this consumer
still owns are renewed (checked in the same script), so a renewal can never steal an entry back."""

from __future__ import annotations

import logging
import threading

from redis import Redis
from redis.exceptions import RedisError

from services.core.reconnect import TRANSIENT

log = logging.getLogger(__name__)

# KEYS: stream. ARGV: group, consumer, ids... Returns how many entries were renewed.
_RENEW = """
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""


class Lease:
    def __init__(self, client: Redis, stream_key: str, group: str, consumer: str, visibility_timeout_ms: int) -> None:
        self.stream_key, self.group, self.consumer = stream_key, group, consumer
        self.interval = max(visibility_timeout_ms / 3000, 0.02)
        self._renew = client.register_script(_RENEW)
        self._ids: tuple[bytes, ...] = ()  # replaced whole, never mutated: the thread reads a consistent snapshot
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{group}", daemon=True)
        self._thread.start()

    def hold(self, entry_ids: list[bytes]) -> None:
        self._ids = tuple(entry_ids)

    def release(self) -> None:
        self._ids = ()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._closed.wait(self.interval):
            ids = self._ids
            if not ids:
                continue
            try:
                self._renew(keys=[self.stream_key], args=[self.group, self.consumer, *ids])
            except TRANSIENT:
                continue  # an outage: the worker's loop logs it once (core.reconnect); the next renewal may work
            except RedisError as exc:  # the next renewal may succeed; the batch itself will see a lasting outage
                log.warning("lease renewal failed", extra={"event": "worker.lease_failed", "error": str(exc)})
