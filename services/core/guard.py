"""Keeping a commit all-or-nothing on a Redis that has no rollback.

MULTI/EXEC is atomic in isolation but not in failure: a command that fails *at EXEC time* (WRONGTYPE, say an
HSET on a key holding a string) fails alone and every other command of the transaction is still applied, so an
input could be acknowledged while its output was never published. Errors found while *queueing* (unknown
command, wrong arity) abort the whole transaction and are harmless.

So before EXEC, every key the transaction writes is checked to hold the type its commands need (or nothing):
a commit that would fail that way fails before anything is written. What this cannot see, and what is then
reported as a partially applied commit (`CommitError.partial`), is a key changing type between the check and
EXEC, a value-level error (HINCRBY on a field that is not an integer), and the keys of commands or scripts not
in the tables below. Only a foreign writer corrupting the pipeline's keys can cause any of these.

And a commit must never be sent twice: a redis-py client with retries re-sends a transaction after a connection
error, and when it was only the reply that got lost, the commit is applied twice (outputs duplicated). So stage
consumers refuse such clients; a lost reply surfaces as a ConnectionError, and whatever was not committed stays
pending and is reclaimed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from redis import Redis

# Write commands whose first argument is a key that must hold this type (or not exist).
COMMAND_KEY_TYPES: dict[str, str] = {
    **dict.fromkeys(("XADD", "XACK", "XDEL", "XTRIM", "XCLAIM", "XAUTOCLAIM", "XSETID"), "stream"),
    **dict.fromkeys(("HSET", "HSETNX", "HMSET", "HINCRBY", "HINCRBYFLOAT", "HDEL"), "hash"),
    **dict.fromkeys(("SADD", "SREM"), "set"),
    **dict.fromkeys(("ZADD", "ZINCRBY", "ZREM"), "zset"),
    **dict.fromkeys(("LPUSH", "RPUSH", "LREM", "LTRIM", "LSET"), "list"),
    **dict.fromkeys(("INCR", "INCRBY", "DECR", "DECRBY", "INCRBYFLOAT", "APPEND", "SETRANGE"), "string"),
}

# Script SHA1 -> the type each of its KEYS must hold. Scripts that want their keys checked register here.
SCRIPT_KEY_TYPES: dict[str, tuple[str, ...]] = {}


class CommitError(RuntimeError):
    """A commit that could not be applied. `partial` is False when nothing was written (the usual case)."""

    def __init__(self, message: str, *, partial: bool) -> None:
        super().__init__(message)
        self.partial = partial


def require_no_retry(client: Redis) -> None:
    retry = client.get_retry()
    if retry is not None and retry.get_retries() > 0:
        raise ValueError(
            "this Redis client retries commands after connection errors, which would commit a transaction twice "
            "when only its reply was lost: use redis.Redis.from_url(url), or pass retry=Retry(NoBackoff(), 0)"
        )


def register_script_keys(sha: str, *types: str) -> None:
    SCRIPT_KEY_TYPES[sha] = types


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def expected_types(commands: Iterable[tuple[Sequence[Any], Any]]) -> dict[str, str]:
    """Key -> the type the queued `commands` (a redis-py pipeline's command_stack) need it to hold."""
    expected: dict[str, str] = {}

    def want(key: Any, kind: str) -> None:
        key = _text(key)
        if expected.setdefault(key, kind) != kind:
            raise CommitError(f"key {key!r} is used both as a {expected[key]} and a {kind}", partial=False)

    for args, _options in commands:
        name = _text(args[0]).upper()
        if name in ("EVALSHA", "EVAL"):  # EVAL carries the script itself: its SHA1 is the key of the table
            nkeys = int(args[2])
            body = None if name == "EVALSHA" else _bytes(args[1])
            sha = _text(args[1]) if body is None else hashlib.sha1(body, usedforsecurity=False).hexdigest()
            for key, kind in zip(args[3:3 + nkeys], SCRIPT_KEY_TYPES.get(sha, ()), strict=False):
                want(key, kind)
        elif name in COMMAND_KEY_TYPES and len(args) > 1:
            want(args[1], COMMAND_KEY_TYPES[name])
    return expected


def check_key_types(client: Redis, commands: Sequence[tuple[Sequence[Any], Any]],
                    consumer: str | None = None) -> None:
    """Raise CommitError (nothing written) if a key the commands write holds another type; with `consumer`, raise
    StaleCommit if an entry the commands XACK is not pending under it (core.rewind), in the same round trip."""
    from .rewind import StaleCommit, pending_checks, stale_acks

    expected = expected_types(commands)
    acks = pending_checks(commands) if consumer else []
    if not expected and not acks:
        return
    pipe = client.pipeline(transaction=False)
    for key in expected:
        pipe.type(key)
    for stream, group, entry_id in acks:
        pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    replies = pipe.execute()
    for (key, kind), actual in zip(expected.items(), replies, strict=False):
        if _text(actual) not in ("none", kind):
            raise CommitError(f"key {key!r} holds a {_text(actual)}, not a {kind}: nothing was committed",
                              partial=False)
    if acks and (stale := stale_acks(replies[len(expected):], consumer or "")):
        raise StaleCommit(f"{stale} of the {len(acks)} entries this commit acknowledges are no longer pending under "
                          f"{consumer} (Redis restarted from an older state, or another consumer reclaimed them): "
                          "nothing was committed")
