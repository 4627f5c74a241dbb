"""Riding out Redis outages: the one helper every role's loop uses.

A loop step that fails with a connection error (redis-py's ConnectionError — BusyLoadingError, while a restarted
Redis loads its AOF, is one — or TimeoutError) is not retried as such: the role marks Redis down, backs off
(exponential, full jitter, capped at `cap_s`) until a PING answers, runs its `then` (e.g. re-create consumer groups
a Redis restarted without persistence lost) and carries on with a *new* step. So a commit (publish + XACK in one
MULTI/EXEC) is never re-sent: if the connection broke during EXEC, the entries were either committed or are still
pending under this consumer, and XAUTOCLAIM hands them out again after the visibility timeout — no loss, no
duplicate output (see core.guard). A commit refused because its entries are no longer this consumer's (a Redis
restarted from an older state, core.rewind) only abandons the step: Redis answers, nothing is marked down.

Waiting is for outages only. A connection error that is a configuration mistake (wrong credentials, an ACL that
forbids a command, a certificate that does not verify: core.redis_connect.explain_security's exit-2 kinds) would
never heal by waiting, so it is raised: the role exits 2 with one line, and its supervisor (or Kubernetes) shows
a crash loop with the reason instead of a role that looks alive and does nothing."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

import redis
from redis import Redis

from .health import RoleHealth
from .redis_connect import explain_security
from .rewind import StaleCommit

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
"""Errors that mean "Redis is unreachable or not ready": BusyLoadingError is a ConnectionError subclass."""


def is_misconfigured(exc: BaseException) -> bool:
    """A TRANSIENT-looking error that waiting cannot fix: credentials refused, no ACL permission, TLS that fails
    verification or wants a client certificate."""
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError
                  | redis.exceptions.NoPermissionError):
        return True
    verdict = explain_security(exc, "")
    return verdict is not None and verdict[1] == 2


def is_nogroup(exc: BaseException) -> bool:
    """A consumer group (or its stream) vanished: a Redis restarted from an older or no AOF."""
    return isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc)


class Backoff:
    """Delays in seconds: full jitter over base * 2^n, capped at `cap_s` (n = failures since the last reset)."""

    def __init__(self, base_s: float = 0.05, cap_s: float = 5.0, rng: random.Random | None = None) -> None:
        self.base_s, self.cap_s, self.failures = base_s, cap_s, 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)  # at least half: no hot loop of near-zero waits

    def reset(self) -> None:
        self.failures = 0


class Reconnect:
    """Waits out one role's Redis outages. Thread-safe per instance only if each thread has its own."""

    def __init__(self, client: Redis, health: RoleHealth, stop: threading.Event | None = None, *,
                 cap_s: float = 5.0) -> None:
        self.client, self.health = client, health
        self.stop = stop or threading.Event()
        self.backoff = Backoff(cap_s=cap_s)

    def recover(self, exc: BaseException, then: Callable[[], None] | None = None) -> bool:
        """After `exc` (a TRANSIENT error): mark Redis down, wait until it answers a PING and `then` succeeds.
        True once it does; False if `stop` was set meanwhile (the caller returns). Raises a misconfiguration
        (is_misconfigured) at once, whether it is `exc` or what a PING answers meanwhile."""
        self.health.redis_down(exc)
        if is_misconfigured(exc):
            raise exc
        while not self.stop.wait(self.backoff.next()):
            try:
                self.client.ping()
                if then is not None:
                    then()
            except TRANSIENT as again:
                if is_misconfigured(again):
                    raise
                continue
            self.backoff.reset()
            self.health.redis_up()
            return True
        return False

    def call(self, fn: Callable[[], T]) -> T | None:
        """`fn()`, called again after each outage until it succeeds (None if `stop` was set first). Only for
        what is safe to repeat: a role's start (creating its groups), never a commit."""
        while not self.stop.is_set():
            try:
                result = fn()
            except TRANSIENT as exc:
                if not self.recover(exc):
                    return None
                continue
            self.health.redis_up()
            return result
        return None

    def run(self, step: Callable[[], object], then: Callable[[], None] | None = None) -> None:
        """Call `step` until `stop` is set, riding out outages (and vanished groups: `then` re-creates them)."""
        while not self.stop.is_set():
            try:
                step()
            except StaleCommit as exc:  # Redis is there: the step's entries are no longer ours (core.rewind)
                log.warning("commit refused: its entries are no longer ours", extra={
                    "event": "stage.stale_commit", "role": self.health.role, "stage": self.health.stage,
                    "error": str(exc)[:300]})
            except TRANSIENT as exc:
                if not self.recover(exc, then):
                    return
            except redis.ResponseError as exc:
                if not is_nogroup(exc) or then is None:
                    raise
                log.warning("consumer group vanished; re-creating it", extra={
                    "event": "stage.nogroup", "role": self.health.role, "stage": self.health.stage})
                if not self.recover_groups(then):
                    return

    def recover_groups(self, then: Callable[[], None]) -> bool:
        try:
            then()
            return True
        except TRANSIENT as exc:
            return self.recover(exc, then)
