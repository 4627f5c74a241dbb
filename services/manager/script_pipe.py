"""Calls of one Lua script pipelined on one Redis connection: `send` writes a call (EVAL) and returns without
waiting for its reply, `replies` reads the replies in order. The caller builds call k+1 while Redis runs call k, so
a page of calls costs about max(this process, Redis) instead of their sum, and Redis still runs each call whole
(atomic) and serves other clients between calls.

Each call must be safe to run again (the dispatch script re-checks every item it is given): when the connection
fails, the calls not yet answered are re-run through the client (with its retry policy). A call that did run
before the failure then finds its items already dispatched (counted as known, never dispatched twice).

Wire form: EVAL with the script's text (no NOSCRIPT case after a SCRIPT FLUSH or a restart; Redis hashes the text,
~2 KB, once per call and reuses the compiled function), packed by hiredis (a declared dependency) when it has
`pack_command`, else by the connection's own packer."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    from hiredis import pack_command as _pack
except ImportError:  # an older hiredis: the connection packs
    _pack = None

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class ScriptPipe:
    """`with ScriptPipe(client, script, keys) as pipe: pipe.send(args); ...; pipe.replies()` -> the replies, in
    the order sent. A script error (ResponseError) is raised by `replies` after every reply was read (the connection
    stays usable); calls sent after the failing one still ran. Memory: the arguments of unanswered calls (a page)."""

    def __init__(self, client: Redis, script: str, keys: Sequence[str]) -> None:
        self.client = client
        self.script = script
        self.keys = tuple(keys)
        self._head: tuple[Any, ...] = ("EVAL", script, len(self.keys), *self.keys)
        self._conn: Any = None
        self._lost = False  # the connection failed: the remaining calls go through the client
        self._sent: list[Sequence[Any]] = []  # arguments of the calls sent and not answered yet

    def __enter__(self) -> ScriptPipe:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._release(broken=bool(self._sent))

    def send(self, args: Sequence[Any]) -> None:
        self._sent.append(args)
        if self._lost:
            return
        first = self._conn is None
        try:
            if first:
                pool = self.client.connection_pool
                try:
                    self._conn = pool.get_connection()
                except TypeError:  # redis-py < 5.3 wants a command name
                    self._conn = pool.get_connection("EVAL")  # type: ignore[call-arg]
            command = self._head + tuple(args)
            packed = [_pack(command)] if _pack is not None else self._conn.pack_command(*command)
            self._conn.send_packed_command(packed, check_health=first)
        except _LOST:
            self._release(broken=True)
            self._lost = True

    def replies(self) -> list[Any]:
        out: list[Any] = []
        error: ResponseError | None = None
        for args in self._sent:
            if not self._lost:
                try:
                    out.append(self._conn.read_response())
                    continue
                except ResponseError as exc:  # this call failed as a whole (a script is atomic); read on
                    error = error or exc
                    out.append(None)
                    continue
                except _LOST:
                    self._release(broken=True)
                    self._lost = True
            try:
                out.append(self.client.eval(self.script, len(self.keys), *self.keys, *args))
            except ResponseError as exc:
                error = error or exc
                out.append(None)
        self._sent = []
        if error is not None:
            raise error
        return out

    def _release(self, *, broken: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if broken:  # replies left unread would be taken for the next command's
            conn.disconnect()
        self.client.connection_pool.release(conn)
