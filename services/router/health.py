"""Shard health, for the sharder's spill. Evaluated every `interval_s` (never per message) from XINFO and passed
into the sharder's script as an argument. A shard is unhealthy when, for any reader of its stream:

- work waits and nobody takes it: an entry has waited (undelivered, or pending) longer than the consumer timeout
  and no consumer of the group was seen within that timeout — or, before any reader created a group, an entry
  has waited that long. Waiting is measured from the entry id's timestamp against the server's clock.
  (Redis 6.2 only refreshes a consumer's idle time when it is served entries, so an idle consumer of an empty
  stream looks as gone as a dead one: idleness alone says nothing until work waits.)
- or its backlog is past `max_backlog`: the group's pending count plus its lag where Redis reports lag (7.0+);
  Redis 6.2 reports none, so there it is the stream's length — consumers trim what every group acknowledged, so
  the length is what is in flight (plus at most a trim interval of acknowledged entries). Redis 7.0's lag also
  counts entries trimmed (XTRIM, XADD MAXLEN/MINID) before the group read them, so it is capped at the length:
  what is not delivered yet is still in the stream."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(entry_id: Any) -> int:
    return int(_text(entry_id).partition("-")[0])


class ShardHealth:
    def __init__(self, client: Redis, stream_keys: list[str], *, max_backlog: int, consumer_timeout_ms: int,
                 interval_s: float = 1.0) -> None:
        self.client, self.stream_keys = client, stream_keys
        self.max_backlog, self.consumer_timeout_ms, self.interval_s = max_backlog, consumer_timeout_ms, interval_s
        self.healthy = [True] * len(stream_keys)
        self._due = 0.0

    def refresh(self, force: bool = False) -> list[bool]:
        """The current verdict, re-evaluated when due."""
        now = time.monotonic()
        if force or now >= self._due:
            self._due = now + self.interval_s
            self.healthy = self.evaluate()
        return self.healthy

    def evaluate(self) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for key in self.stream_keys:
            pipe.xinfo_groups(key)
            pipe.xlen(key)
            pipe.xrange(key, count=1)
        first = pipe.execute(raise_on_error=False)
        seconds, micros = first[0]
        now_ms = seconds * 1000 + micros // 1000
        streams = []
        for i in range(len(self.stream_keys)):
            groups, length, oldest = first[1 + 3 * i: 4 + 3 * i]
            streams.append(([] if isinstance(groups, ResponseError) else groups, int(length or 0), oldest or []))
        pipe = self.client.pipeline(transaction=False)
        for key, (groups, _, _) in zip(self.stream_keys, streams, strict=True):
            for g in groups:
                name = _text(g["name"])
                pipe.xinfo_consumers(key, name)
                pipe.xpending(key, name)
                pipe.xrange(key, min="(" + _text(g["last-delivered-id"]), count=1)  # the next undelivered one
        replies = iter(pipe.execute(raise_on_error=False))
        verdict = []
        for groups, length, oldest in streams:
            if not groups:  # nobody reads it yet: unhealthy once an entry waited too long, or past the backlog
                stale = bool(oldest) and now_ms - _ms(oldest[0][0]) > self.consumer_timeout_ms
                verdict.append(not stale and length <= self.max_backlog)
                continue
            ok = True
            for g in groups:
                consumers, pending, undelivered = next(replies), next(replies), next(replies)
                waiting = [_ms(e[0][0]) for e in (undelivered,) if e and not isinstance(e, ResponseError)]
                if not isinstance(pending, ResponseError) and pending["pending"]:
                    waiting.append(_ms(pending["min"]))
                stale = bool(waiting) and now_ms - min(waiting) > self.consumer_timeout_ms
                active = not isinstance(consumers, ResponseError) and any(
                    int(c["idle"]) <= self.consumer_timeout_ms for c in consumers)
                lag = g.get("lag")
                backlog = int(g["pending"]) + min(int(lag), length) if lag is not None else length
                ok = ok and (active or not stale) and backlog <= self.max_backlog
            verdict.append(ok)
        return verdict
