"""Calls of one Lua script pipelined on one Redis connection: `send` writes a call (EVAL) and returns without
waiting for its reply, `replies` reads the replies in order. The caller builds call k+1 while Redis runs call k, so
a page of calls costs about max(this process, Redis) instead of their sum, and Redis still runs each call whole
(atomic) and serves other clients between calls.

Each call must be safe to run again (the dispatch script re-checks every item it is given): when the connection
fails, the calls not yet answered are re-run through the client (with its retry policy). A call that did run
before the failure then finds its items already dispatched (counted as known, never dispatched twice).

Wire form: EVALSHA (EVAL would make Redis hash the script's text, ~1.6 KB, on every call: ~2% of a first pass'
Redis time at 250 items a call). A call answered NOSCRIPT (the script cache was flushed, or Redis restarted) did not
run: it is re-run through the client with EVAL, which caches the script again, after the calls sent behind it. The
calls are packed by hiredis in C (one call for the whole command: redis-py's packer runs Python per argument, three
per item here) and written by core.wire."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

try:
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is a declared dependency; without it the connection packs
    pack_command = None
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.core.wire import Sent, Wire

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class ScriptPipe:
    """`with ScriptPipe(client, script, keys) as pipe: pipe.send(args); ...; pipe.replies()` -> the replies, in
    the order sent. A script error (ResponseError) is raised by `replies` after every reply was read (the connection
    stays usable); calls sent after the failing one still ran. Memory: the arguments of unanswered calls (a page)."""

    def __init__(self, client: Redis, script: str, keys: Sequence[str]) -> None:
        self.client = client
        self.script = script
        self.keys = tuple(keys)
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._head: tuple[Any, ...] = ("EVALSHA", self.sha, len(self.keys), *self.keys)
        self._wire = Wire(client)
        self._lost = False  # the connection failed: the remaining calls go through the client, in order
        self._sent: list[tuple[Sequence[Any], Sent | None]] = []  # calls not answered yet (None: not written)

    @property
    def lost(self) -> bool:
        """The connection failed: calls were re-run through the client (one that had run counts its items known)."""
        return self._lost

    def __enter__(self) -> ScriptPipe:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for _, sent in self._sent:
            if sent is not None:
                sent.abandon()
        self._sent = []

    def send(self, args: Sequence[Any]) -> None:
        sent = None
        if not self._lost:
            try:
                command = self._head + tuple(args)
                sent = (self._wire.send_packed([pack_command(command)], 1) if pack_command is not None
                        else self._wire.send([command]))
            except _LOST:
                self._lost = True
        self._sent.append((args, sent))

    def replies(self) -> list[Any]:
        out: list[Any] = []
        error: ResponseError | None = None
        for args, sent in self._sent:
            reply: Any = None
            if sent is not None:
                try:
                    (reply,) = sent.replies()
                except _LOST:
                    self._lost, sent = True, None
            if isinstance(reply, NoScriptError):  # it did not run: run it now, with the text
                sent = None
            if sent is None:
                try:
                    reply = self.client.eval(self.script, len(self.keys), *self.keys, *args)
                except ResponseError as exc:
                    reply = exc
            if isinstance(reply, ResponseError):  # this call failed as a whole (a script is atomic); read on
                error, reply = error or reply, None
            out.append(reply)
        self._sent = []
        if error is not None:
            raise error
        return out
