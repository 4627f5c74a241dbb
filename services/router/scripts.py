"""The server-side router: ONE Lua call per batch reads the entries itself, decides each entry's outputs, XADDs
them and moves the consumer group past them. A script runs atomically, so a routed entry is never lost nor
duplicated, and no entry ever crosses the network.

It reads with XRANGE after the group's last-delivered id and then XGROUP SETID to the last entry it routed, rather
than XREADGROUP + XACK: inside one atomic call the two are the same to every other reader of the group, and the
entries never pass through the pending list, which was most of the per-entry cost (XREADGROUP inside a script
is allowed on Redis 6.2 only without BLOCK anyway, so a caught-up caller pipelines an XREAD BLOCK just before
the call: see RouteScript). The call reports how long it held Redis; the caller sizes a backlog's calls by it
(base.Router._size_batch). Entries a Python-path consumer of the same group left pending are reclaimed by the
router's periodic reclaim (see base).

Redis scripts have no rollback: a runtime error after a write would leave the batch half done. So every key the
call writes is type-checked and every group looked up before anything is written, the JSON decode is protected,
and the decision code touches no keys. The script itself is ROUTE_LUA (route_lua.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, ResponseError

from .route_lua import ROUTE_LUA


@dataclass
class Routed:
    """What one script call did."""

    read: int
    completed: int
    filtered: int
    dead: int
    skipped: int
    spilled: list[int]
    seen: list[bytes]  # per input, the group's last-delivered id now: newer entries are still to be routed
    elapsed_us: int  # how long the call held Redis, by the server's clock (0 where a server freezes TIME)


class RouteScript:
    """One route call per batch. With `wait`, the call waits inside Redis first: an XREAD BLOCK for entries newer
    than the given ids, then the script, pipelined in one round trip. Redis runs a blocked client's next command
    as soon as the XREAD is served, so an entry arriving while the router waits is routed in the same event-loop
    turn as its XADD, without a round trip to the router process (and its scheduling) in between.

    The commands go straight over a pooled connection (send, then read every reply): redis-py's per-command path
    (pipeline object, instrumentation, response callbacks) cost about as much as the round trip itself (~35 us of
    ~70 us measured here), once per call, which a caught-up router pays per wake-up. A connection that fails
    mid-call is disconnected before it goes back to the pool (no reply is left unread on it); the error is
    redis-py's own (ConnectionError, TimeoutError, ResponseError), as before."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._script = client.register_script(ROUTE_LUA)
        self._conf: dict[str, Any] | None = None
        self._conf_json = "{}"

    def _send(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Every command's reply (an error reply as its exception object), over one connection, in one write."""
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # a reply: the connection is fine, the next reply follows
                    replies.append(exc)
            return replies
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def __call__(
        self, *, inputs: list[str], outputs: list[str], tail: list[str], group: str, count: int,
        mode: str, program: str = "", drop_state: str = "", conf: dict[str, Any] | None = None,
        wait: tuple[dict[str, bytes], int] | None = None,
    ) -> Routed:
        """`tail` = [dead-letter stream, stage stats, progress states, progress counts, arrivals hash]; `wait` =
        ({input: id}, block ms) to wait for an entry newer than those ids first (XREAD consumes nothing)."""
        keys = [*inputs, *outputs, *tail]
        conf = conf or {}
        if conf != self._conf:  # the same conf call after call (a sharder's health changes it now and then)
            self._conf, self._conf_json = dict(conf), json.dumps(conf, separators=(",", ":"))
        call = ("EVALSHA", self._script.sha, len(keys), *keys, group, count, len(inputs), mode, program,
                drop_state, self._conf_json)
        commands: list[tuple[Any, ...]] = [call]
        if wait is not None:
            streams, block_ms = wait
            commands.insert(0, ("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *streams, *streams.values()))
        reply = self._send(*commands)[-1]
        if isinstance(reply, NoScriptError):  # a restarted or flushed Redis: load it again, once
            reply = self._script(keys=keys, args=list(call[3 + len(keys):]))
        elif isinstance(reply, ResponseError):
            raise reply
        read, completed, filtered, dead, skipped, spilled, seen, elapsed = reply
        return Routed(int(read), int(completed), int(filtered), int(dead), int(skipped),
                      [int(n) for n in spilled], list(seen), int(elapsed))
