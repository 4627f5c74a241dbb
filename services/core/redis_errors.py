"""A Redis error as a user reads it: one line naming what is wrong and what to do, and the CLI's exit code
(1: Redis is in a state we cannot work with; 2: the configuration is wrong). Never a traceback, never a password."""

from __future__ import annotations

from pathlib import Path

import redis

from .embedded import RedisConfigError, RedisStateError, redact
from .redis_connect import explain_security

EXIT_REDIS, EXIT_CONFIG = 1, 2


def explain(exc: redis.RedisError, configured: str | None, data_dir: Path) -> tuple[str, int]:
    embedded = not configured
    where = f"the embedded Redis of {data_dir}" if embedded else redact(configured or "")
    detail = str(exc).strip() or type(exc).__name__
    if isinstance(exc, RedisConfigError):
        return str(exc), EXIT_CONFIG
    if isinstance(exc, RedisStateError):
        return str(exc), EXIT_REDIS
    if (security := explain_security(exc, where)) is not None:  # TLS, ACL (core.redis_connect)
        return security
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError):
        return (f"Redis at {where} refused the credentials ({detail}); check the user and password in REDIS_URL (or "
                "BATCHMESH_REDIS_USERNAME, BATCHMESH_REDIS_PASSWORD)",
                EXIT_CONFIG)
    if isinstance(exc, redis.exceptions.InvalidResponse):
        return (f"the server at {where} does not speak the Redis protocol ({detail}); check the host and port in "
                "REDIS_URL", EXIT_CONFIG)
    if isinstance(exc, redis.BusyLoadingError):
        return f"Redis at {where} is still loading its dataset into memory; try again in a moment", EXIT_REDIS
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        todo = (f"see {data_dir / 'redis.log'}" if embedded else
                "start it, check REDIS_URL, or unset REDIS_URL to use the embedded Redis")
        return f"Redis unreachable at {where}: {detail}; {todo}", EXIT_REDIS
    if isinstance(exc, redis.ReadOnlyError):
        return f"Redis at {where} is a read-only replica ({detail}); point REDIS_URL at the primary", EXIT_CONFIG
    if isinstance(exc, redis.ResponseError):
        if "unknown command" in detail.lower():
            return (f"Redis at {where} does not know a command batchmesh needs ({detail}); batchmesh needs "
                    "Redis 6.2 or newer", EXIT_CONFIG)
        return f"Redis at {where} answered with an error: {detail}", EXIT_REDIS
    return f"Redis error at {where}: {type(exc).__name__}: {detail}", EXIT_REDIS
