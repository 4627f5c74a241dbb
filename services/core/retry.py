"""Retries with exponential backoff and jitter: the schedule (RetrySpec, a spec field) and where a failed item
waits until it is due (a per-stage retry sorted set).

The schedule. The n-th failed delivery of an item (n = 1, 2, ...) waits

    delay(n) = min(max_backoff, backoff * multiplier ** (n - 1)) * (1 - jitter * U),  U uniform in [0, 1)

seconds before its next delivery: never longer than the nominal curve, never shorter than (1 - jitter) of it, so
replicas retrying the same outage spread out instead of hammering it together (AWS's "equal jitter" at
jitter 0.5; "full jitter" at 1). With the defaults (2 s, x2, jitter 0.25, at most 5 min) and max_deliveries 3 an
item is retried after 1.5-2 s and again 3-4 s later: a downstream outage of 3 s costs latency, not dead letters.
`backoff: 0` retries at once.

Where the item waits. Redis Streams have no per-entry delay, so a failed delivery is committed like any other
outcome — in the stage's one MULTI/EXEC the entry is acknowledged, the item (carrying its delivery count in
`attempts`) is added to the stage's retry sorted set `bm:{p}:retry:<stage>` scored by its due time (Redis' own
clock, TIME, read inside the script: replicas on other hosts agree), and its state becomes `failed`. A mover
script (`MOVE`) takes the due members, XADDs each back onto the stage's input stream addressed to the stage
(`to`), counts the arrivals and ZREMs them, all in one script. Every consumer of the stage runs the mover before
it reads (blocking no longer than the next due time) and so does the manager on every tick (a stage scaled to
zero replicas still gets its retries back, then shows lag). Exactly once: each step is one atomic unit, so a
crash leaves the item either pending (not yet committed: reclaimed), in the set, or on the stream — never in two
places, never in none. While it waits it is neither arrived at a barrier nor dead-lettered, so joins and reduces
keep waiting for it, and `status` counts it as `retrying` (a batch is not done while any stage has one)."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis import Redis
from redis.client import Pipeline

from .guard import register_script_keys
from .item import TO
from .keys import Keys
from .spec_base import parse_duration


class RetrySpec(BaseModel):
    """`retry:` in `defaults` or on a work stage; a stage's fields override the defaults' one by one."""

    model_config = ConfigDict(extra="forbid")

    backoff: float = Field(default=2.0, ge=0, le=86400, description="Wait before the first retry (s; 0 = at once).")
    max_backoff: float = Field(default=300.0, gt=0, le=86400, description="No wait is longer than this (s).")
    multiplier: float = Field(default=2.0, ge=1, le=100, description="Each retry waits this much longer.")
    jitter: float = Field(default=0.25, ge=0, le=1, description="Fraction of each wait taken off at random.")

    _durations = field_validator("backoff", "max_backoff", mode="before")(parse_duration)

    def delay(self, failed: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failed`-th failed delivery (1-based) of an item."""
        n = max(failed, 1)
        try:
            nominal = min(self.max_backoff, self.backoff * self.multiplier ** (n - 1))
        except OverflowError:
            nominal = self.max_backoff
        return nominal * (1 - self.jitter * (rng or random).random())


def retry_policy(pipeline: Any, stage: str) -> RetrySpec:
    """The policy of a work stage: the spec's `defaults.retry`, overridden field by field by the stage's own."""
    base: RetrySpec = pipeline.defaults.retry
    own: RetrySpec | None = getattr(pipeline.stages[stage].body, "retry", None)
    if own is None:
        return base
    return base.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})


def retry_key(keys: Keys, stage: str) -> str:
    """Sorted set of one stage's items waiting for a retry: member = the encoded item, score = due (ms, Redis)."""
    return f"{keys.prefix}:retry:{stage}"


def _now_ms() -> str:
    return "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"


# KEYS: retry set. ARGV: delay (ms), member. Due = Redis' clock + delay.
_SCHEDULE = _now_ms() + "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])\nreturn 1\n"

# KEYS: retry set, input stream, arrivals hash. ARGV: group, max entries moved.
# Returns {moved, ms until the next member is due (-1: none left)}.
_MOVE = _now_ms() + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'item', member, '""" + TO.decode() + """', ARGV[1])
  redis.call('ZREM', KEYS[1], member)
end
if #due > 0 then redis.call('HINCRBY', KEYS[3], KEYS[2], #due) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
return {#due, wait}
"""

MOVE_LIMIT = 1000  # members moved per call: keeps each script short


class RetryQueue:
    """One stage's retry set: `schedule` inside a commit, `move_due` from any consumer or the manager."""

    def __init__(self, client: Redis, keys: Keys, stage: str, stream_key: str) -> None:
        self.key, self.stream_key, self.group, self.keys = retry_key(keys, stage), stream_key, stage, keys
        self._schedule = client.register_script(_SCHEDULE)
        self._move = client.register_script(_MOVE)
        register_script_keys(self._schedule.sha, "zset")
        register_script_keys(self._move.sha, "zset", "stream", "hash")

    def schedule(self, pipe: Pipeline, member: bytes, delay_s: float) -> None:
        """Queue, on the commit's transaction, the item `member` (encoded) to be due in `delay_s`."""
        self._schedule(keys=[self.key], args=[max(0, int(delay_s * 1000)), member], client=pipe)

    def move_due(self, limit: int = MOVE_LIMIT) -> tuple[int, float | None]:
        """Move due members back onto the stream. Returns (moved, seconds until the next is due, or None)."""
        moved, wait = self._move(keys=[self.key, self.stream_key, self.keys.arrivals()], args=[self.group, limit])
        return int(moved), (None if int(wait) < 0 else int(wait) / 1000)


def waiting(client: Redis, keys: Keys, stage: str) -> int:
    """How many of the stage's items wait for a retry."""
    return int(client.zcard(retry_key(keys, stage)))
