"""A role's health, as /healthz and the `batchmesh_role_up` / `batchmesh_redis_up` gauges see it.

Each role object (a worker replica, a router, a barrier, the manager) registers one `RoleHealth`; it is healthy
while its main loop runs and its Redis answers. A process hosting several (tests, the manager's executors) is
healthy when all of them are. Redis outages are marked by core.reconnect: one log line when Redis goes away
(`event: redis.down`), one when it answers again (`event: redis.up`), never one per retry."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from . import metrics
from .embedded import redact

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered: list[RoleHealth] = []


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def _without_secrets(text: str) -> str:
    """`text` with the password of every URL in it masked (an error may quote a REDIS_URL): /healthz, the
    metrics and the logs never show a secret."""
    return _URL.sub(lambda m: redact(m.group(0)), text)


class _Unexported:
    """Stands in for a metric a role does not export."""

    def set(self, value: float) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass


class RoleHealth:
    """One role's state. `role`: source | manager | router | barrier | worker; `stage`: "" for source/manager."""

    def __init__(self, pipeline: str, role: str, stage: str = "", *, uses_redis: bool = True) -> None:
        self.pipeline, self.role, self.stage = pipeline, role, stage
        self.running = False
        self.redis_ok = True
        self.reason = ""  # why Redis is down (the exception's class and message)
        self.down_since = 0.0  # time.monotonic() of the outage's start
        self._lock = threading.Lock()
        self.m_up = metrics.ROLE_UP.labels(pipeline=pipeline, role=role, stage=stage)
        # The source never talks to Redis: no redis_up series for it (labels() alone would export a 0).
        self.m_redis: Any = metrics.REDIS_UP.labels(pipeline=pipeline, role=role) if uses_redis else _Unexported()
        self.m_disconnects: Any = (metrics.REDIS_DISCONNECTS.labels(pipeline=pipeline, role=role) if uses_redis
                                   else _Unexported())
        self.m_redis.set(1)

    # -- the main loop -------------------------------------------------------------------------------------

    def started(self) -> RoleHealth:
        with _lock:
            if self not in _registered:
                _registered.append(self)
        self.running = True
        self.m_up.set(1)
        return self

    def stopped(self) -> None:
        self.running = False
        self.m_up.set(0)
        with _lock:
            if self in _registered:
                _registered.remove(self)

    # -- Redis ---------------------------------------------------------------------------------------------

    def redis_down(self, exc: BaseException) -> bool:
        """Mark Redis unreachable; True (and one log line, one disconnect counted) only at an outage's start."""
        with self._lock:
            if not self.redis_ok:
                return False
            self.redis_ok, self.down_since = False, time.monotonic()
            self.reason = f"redis: {type(exc).__name__}: {_without_secrets(str(exc))[:200]}"
        self.m_redis.set(0)
        self.m_disconnects.inc()
        log.warning("redis unreachable; retrying with backoff", extra={
            "event": "redis.down", "role": self.role, "stage": self.stage, "error": self.reason})
        return True

    def redis_up(self) -> None:
        """Mark Redis answering again (a no-op while it never went away)."""
        with self._lock:
            if self.redis_ok:
                return
            self.redis_ok, self.reason = True, ""
            outage_s = time.monotonic() - self.down_since
        self.m_redis.set(1)
        log.warning("redis reachable again", extra={
            "event": "redis.up", "role": self.role, "stage": self.stage, "outage_seconds": round(outage_s, 3)})

    # -- verdict -------------------------------------------------------------------------------------------

    def problem(self) -> str | None:
        """None when healthy, else why not."""
        if not self.running:
            return f"{self.role} {self.stage}: main loop not running".replace("  ", " ")
        if not self.redis_ok:
            return f"{self.role} {self.stage}: {self.reason}".replace("  ", " ")
        return None


def registered() -> list[RoleHealth]:
    with _lock:
        return list(_registered)


def check() -> tuple[bool, str]:
    """The process's verdict: (healthy, reason). No role registered yet = not healthy (still starting)."""
    roles = registered()
    if not roles:
        return False, "no role running (starting or stopped)"
    problems = [p for p in (r.problem() for r in roles) if p]
    return (not problems, "; ".join(problems) or "ok")
