"""Commands written to Redis now, their replies read later: Redis works while the caller does.

redis-py's pipeline sends its commands and waits for their replies in one call. Some of our hot paths want the
two apart: a worker sends its hold and runs the items before reading the hold's replies; the dispatcher encodes
call k+1 while Redis runs call k; a router under a backlog sends its next route call before reading the last
one's reply, so Redis finds work queued instead of idling for a round trip. `Wire` holds one pooled connection
while sends are in flight on it and gives it back when the last reply is read.

    wire = Wire(client)
    sent = wire.send([("MULTI",), ("EVALSHA", sha, 1, key, arg), ("EXEC",)])
    ...                      # Redis runs it meanwhile
    replies = sent.replies() # [b"OK", b"QUEUED", [...]]: an error reply is returned as its ResponseError

Replies are read in the order sent (asking for a later send's reads the earlier ones first and keeps them). A
connection that fails is disconnected and every send still unanswered on it is lost: `replies()` raises
redis' ConnectionError for each. Like a pipeline's commands, a lost send ran whole, in part or not at all, so
what is sent must be safe that way (a script or MULTI/EXEC is atomic; it may or may not have run). Built on
redis-py's public connection API: ConnectionPool.get_connection, Connection.pack_commands (hiredis packs when
installed), send_packed_command, read_response."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError, ResponseError

try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a declared dependency; without it the connection packs
    _pack_command = None

Command = Sequence[Any]


def packed(commands: Sequence[tuple[Any, ...]]) -> list[bytes] | None:
    """`commands` (tuples of str (UTF-8), bytes, int or float words) in the wire protocol as one buffer for
    `Wire.send_packed`, packed by hiredis in C: redis-py's packer runs a Python generator over every word first
    (about a microsecond per item on a worker's hold and commit). None without hiredis: then pass the commands
    to `send_packed` as well, and the connection packs them."""
    if _pack_command is None:  # pragma: no cover
        return None
    return [b"".join([_pack_command(command) for command in commands])]


class Sent:
    """One `Wire.send`: its replies, once read, in the order of its commands."""

    def __init__(self, wire: Wire, count: int) -> None:
        self._wire, self._count = wire, count
        self._replies: list[Any] | None = None
        self.lost = False  # its connection failed before its replies were read

    def replies(self) -> list[Any]:
        """The replies, reading them (and any earlier send's) off the connection first. An error reply is
        returned as its ResponseError. Raises ConnectionError/TimeoutError if the connection failed first."""
        if self._replies is None and not self.lost:
            self._wire._read_until(self)
        if self.lost:
            raise ConnectionError("the connection failed before this send's replies were read: it ran whole, in "
                                  "part or not at all")
        assert self._replies is not None
        return self._replies

    def abandon(self) -> None:
        """Its replies will never be read (the caller gave up): the connection is dropped, with every send on it."""
        if self._replies is None and not self.lost:
            self._wire._fail()


class Wire:
    """Sends on one pooled connection of `client`, taken at the first send and given back when no reply is left
    unread. Not thread-safe: one Wire per thread."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._conn: Any = None
        self._unread: deque[Sent] = deque()  # sent on _conn, replies not read yet, in order

    @property
    def in_flight(self) -> int:
        return len(self._unread)

    def send(self, commands: Sequence[Command]) -> Sent:
        """Write `commands` (tuples of a command's words) in one go and return without reading a reply.
        A connection error is raised as redis-py's, after every earlier send on the connection was marked lost."""
        return self.send_packed(None, len(commands), commands)

    def send_packed(self, data: Sequence[bytes] | None, count: int, commands: Sequence[Command] = ()) -> Sent:
        """`send` of `count` commands already in the wire protocol (`data`: byte strings, e.g. from
        hiredis.pack_command), written as they are: no Python work per argument on a hot path
        (manager.script_pipe). With `data` None, `commands` are packed by the connection."""
        if self._conn is None:
            self._conn = self.client.connection_pool.get_connection()
        conn = self._conn
        try:
            conn.send_packed_command(conn.pack_commands(commands) if data is None else data,
                                     check_health=not self._unread)
        except BaseException:
            self._fail()
            raise
        sent = Sent(self, count)
        self._unread.append(sent)
        return sent

    def _read_until(self, target: Sent) -> None:
        conn = self._conn
        try:
            while self._unread:
                sent = self._unread[0]
                sent._replies = [self._reply(conn) for _ in range(sent._count)]
                self._unread.popleft()
                if sent is target:
                    break
        except BaseException:
            self._fail()
            raise
        if not self._unread:
            self._release()

    @staticmethod
    def _reply(conn: Any) -> Any:
        try:
            return conn.read_response()
        except ResponseError as exc:  # a reply like any other: the connection is fine, the next one follows
            return exc

    def _fail(self) -> None:
        for sent in self._unread:
            sent.lost = True
        self._unread.clear()
        if self._conn is not None:
            self._conn.disconnect()  # replies may be left unread on it: not reusable as it is
            self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.client.connection_pool.release(conn)
