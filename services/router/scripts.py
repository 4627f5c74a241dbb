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

from services.core.wire import Sent as WireSent
from services.core.wire import Wire

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


class Call:
    """A sent route call whose reply is still to be read (core.wire: in the order the calls were sent)."""

    def __init__(self, script: RouteScript, sent: WireSent, keys: list[str], args: list[Any]) -> None:
        self.script, self.sent, self.keys, self.args = script, sent, keys, args

    def result(self) -> Routed:
        """Read this call's reply. A connection that failed before it was read raises redis' ConnectionError (or
        the TimeoutError that broke it): the call ran whole or not at all. NOSCRIPT (a restarted or flushed Redis:
        nothing ran) loads the script and calls it again, once."""
        reply = self.sent.replies()[-1]
        if isinstance(reply, NoScriptError):
            reply = self.script._script(keys=self.keys, args=self.args)
        elif isinstance(reply, ResponseError):
            raise reply
        read, completed, filtered, dead, skipped, spilled, seen, elapsed = reply
        return Routed(int(read), int(completed), int(filtered), int(dead), int(skipped),
                      [int(n) for n in spilled], list(seen), int(elapsed))


@dataclass
class Sent:
    """A route call sent and not yet read, with what the router reads its reply against (base._server_step)."""

    call: Call
    inputs: list[str]  # in the order of the call (the rotation)
    count: int
    alone: bool  # nothing else on the connection: its wall time is its own
    began: float


class RouteScript:
    """One route call per batch. With `wait`, the call waits inside Redis first: an XREAD BLOCK for entries newer
    than the given ids, then the script, pipelined in one round trip. Redis runs a blocked client's next command
    as soon as the XREAD is served, so an entry arriving while the router waits is routed in the same event-loop
    turn as its XADD, without a round trip to the router process (and its scheduling) in between.

    `send` writes a call and returns at once; the caller may send the next one before reading the first's reply
    (both on the same connection, read in order): under a backlog Redis then finds the next call queued when it
    finishes one, instead of idling for the reply's round trip and the caller's turnaround. Each call is atomic and
    starts from where the group is when it runs, so a second call routes the entries after the first's.

    The commands go over core.wire, straight on a pooled connection: redis-py's per-command path (pipeline
    object, instrumentation, response callbacks) cost about as much as the round trip itself (~35 us of ~70 us
    measured here), once per call, which a caught-up router pays per wake-up. Errors are redis-py's own
    (ConnectionError, TimeoutError, ResponseError), as before."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._script = client.register_script(ROUTE_LUA)
        self._conf: dict[str, Any] | None = None
        self._conf_json = "{}"
        self._wire = Wire(client)  # one connection while calls are in flight

    def send(
        self, *, inputs: list[str], outputs: list[str], tail: list[str], group: str, count: int,
        mode: str, program: str = "", drop_state: str = "", conf: dict[str, Any] | None = None,
        wait: tuple[dict[str, bytes], int] | None = None,
    ) -> Call:
        """`tail` = [dead-letter stream, stage stats, progress states, progress counts, arrivals hash]; `wait` =
        ({input: id}, block ms) to wait for an entry newer than those ids first (XREAD consumes nothing)."""
        keys = [*inputs, *outputs, *tail]
        conf = conf or {}
        if conf != self._conf:  # the same conf call after call (a sharder's health changes it now and then)
            self._conf, self._conf_json = dict(conf), json.dumps(conf, separators=(",", ":"))
        args = [group, count, len(inputs), mode, program, drop_state, self._conf_json]
        commands: list[tuple[Any, ...]] = [("EVALSHA", self._script.sha, len(keys), *keys, *args)]
        if wait is not None:
            streams, block_ms = wait
            commands.insert(0, ("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *streams, *streams.values()))
        return Call(self, self._wire.send(commands), keys, args)

    def __call__(self, **kwargs: Any) -> Routed:
        """Send one call and read its reply (see `send` for the arguments)."""
        return self.send(**kwargs).result()
