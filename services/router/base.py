"""What every router shares: consume the input stream(s) with the consumer group named after the stage, decide
each item's outputs, publish them and acknowledge the inputs in one step — a core `Commit` (one MULTI/EXEC) on
the Python path, one Lua call on the server-side path. A router kind is one small subclass registered by name.

Both paths route an entry's `item` field byte for byte and judge only what they read: an entry whose item is not a
JSON object with a non-empty string id (at most 1024 characters) and an object `data` is dead-lettered; anything
else about the item is for the stage that uses it to check."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from prometheus_client import Counter, Gauge
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from services.core import STATES, Commit, Delivery, Keys, Settings, StreamConsumer
from services.core import metrics as core_metrics
from services.core.expressions import Expression
from services.core.health import RoleHealth
from services.core.item import FIELD
from services.core.keys import BATCH_TTL_S
from services.core.reconnect import Reconnect
from services.core.spec_routers import RouterSpec
from services.core.spec_skips import Skip

from .document import Document, document, entry_id_key
from .scripts import RouteScript, Sent

log = logging.getLogger(__name__)

LABELS = core_metrics.LABELS
ITEMS_FILTERED = Counter("batchmesh_items_filtered", "Items a filter dropped (acknowledged, not published)", LABELS)
ITEMS_SPILLED = Counter("batchmesh_items_spilled", "Items routed away from their unhealthy home shard",
                        (*LABELS, "shard"))
SHARD_HEALTHY = Gauge("batchmesh_shard_healthy", "1 while a shard takes its own items", (*LABELS, "shard"))

DropHook = Callable[[Pipeline, list[str]], None]  # (the commit's transaction, ids of the dropped items)

ROUTERS: dict[str, type[Router]] = {}
CALL_BUDGET_MS = 2.0  # Redis time one script call may take under a backlog (issue 12: 1000 entries ~ 6 ms)
MAX_LUA_COUNT = 4096  # entries per input per call at most, whatever the budget would allow


def register(cls: type[Router]) -> type[Router]:
    """Class decorator: make a router kind available by its spec kind name (copy, filter, ...)."""
    ROUTERS[cls.kind] = cls
    return cls


class Router:
    kind: ClassVar[str]
    mode: ClassVar[str] = "all"  # what the Lua script does: all | filter | split | shard

    def __init__(
        self, client: Redis, settings: Settings, stage: str, spec: RouterSpec, *, server_side: bool | None = None,
        consumer: str | None = None, drop_state: str | None = None, on_drop: DropHook | None = None,
        skips: Sequence[Skip] = (),
    ) -> None:
        if drop_state is not None and drop_state not in STATES:
            raise ValueError(f"unknown drop state {drop_state!r} (one of {', '.join(STATES)})")
        self.prepare(spec)  # first: a spec it rejects must not get as far as creating consumer groups
        self.client, self.settings, self.stage, self.spec = client, settings, stage, spec
        self.keys = Keys(settings.pipeline)
        self.outputs: list[str] = spec.outputs(stage)
        self.output_keys = [self.keys.stream(name) for name in self.outputs]
        self.consumer_name = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.consumers = [StreamConsumer(client, settings, stage=stage, input_stream=name,
                                         consumer=self.consumer_name) for name in spec.inputs]
        self.drop_state, self.on_drop = drop_state, on_drop
        # The barriers this router tells about items it sends away from them (core.spec_skips.skip_plan): per
        # barrier, the outputs leading away; the record goes into the barrier's `skipped` set of the item's batch.
        self.skips = [(s.barrier, s.away) for s in skips]
        self._skip_conf: dict[str, Any] = {}
        if self.skips:
            head, tail = zip(*(self.keys.barrier(b, "\0", "skipped").split("\0") for b, _ in self.skips), strict=True)
            self._skip_conf = {"skips": [[h, t, "".join("1" if i in away else "0" for i in range(len(self.outputs)))]
                                         for h, t, (_, away) in zip(head, tail, self.skips, strict=True)],
                               "ttl": BATCH_TTL_S}
        expr = self.expression()
        possible = (expr is None or expr.simple) and on_drop is None  # a Python callback needs the Python path
        if server_side and not possible:
            why = "it calls back into Python on drops" if on_drop else f"{expr} is not simple"
            raise ValueError(f"stage {stage!r} cannot run server-side: {why}")
        self.server_side = possible if server_side is None else server_side
        self.count = self.batch_count()
        self.lua_count = self.count  # sized by each call's measured cost (_size_batch)
        self._entry_us: float | None = None  # Redis time per entry of a script call (_size_batch)
        self._seen: dict[str, bytes] = {}  # input -> the group's last-delivered id, when the last call caught up
        self._backlog = False  # the last call took a full batch: more are waiting
        self._inflight: Sent | None = None  # a call sent behind the one being read (a backlog, _server_step)
        self._program = expr.program_json if expr is not None else ""
        self._script = RouteScript(client) if self.server_side else None
        self._tail = [self.keys.dead_letters(stage), self.keys.stage_stats(stage), self.keys.states(),
                      self.keys.counts(), self.keys.arrivals()]
        self._next_reclaim = 0.0
        self._round = 0
        self._spilled = [0] * len(self.outputs)  # per output (shard), during one Python-path batch
        self.labels = {"pipeline": settings.pipeline, "stage": stage}
        self.m_filtered = ITEMS_FILTERED.labels(**self.labels)

    # -- what a kind defines -------------------------------------------------------------------------------

    def prepare(self, spec: Any) -> None:
        """Compile what decisions need from the spec (called early in __init__, before the path is chosen)."""

    def expression(self) -> Expression | None:
        """The expression decisions depend on (None: they depend on nothing in the item)."""
        return None

    def decide(self, doc: Document) -> Sequence[int]:
        """Indexes into `self.outputs` the item goes to; empty = dropped (only a filter drops)."""
        return range(len(self.outputs))

    def lua_conf(self) -> dict[str, Any]:
        return {}

    def batch_count(self) -> int:
        """Entries read per input per step (the Python path; the first script call's count)."""
        return self.settings.batch_size

    def max_lua_count(self) -> int:
        """The most entries per input one script call may take under a backlog (see _size_batch)."""
        return max(self.count, MAX_LUA_COUNT)

    def before_step(self) -> None:
        """Called before every batch (the sharder refreshes its shards' health here, when it is due)."""

    # -- running -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, health: RoleHealth | None = None) -> None:
        """Route until `stop` is set, then leave the consumer group cleanly."""
        log.info("router started", extra={"event": "router.start", "stage": self.stage, "kind": self.kind,
                                          "server_side": self.server_side, "inputs": self.spec.inputs,
                                          "outputs": self.outputs, "consumer": self.consumer_name})
        workers = core_metrics.WORKERS.labels(**self.labels)
        workers.inc()
        health = (health or RoleHealth(self.settings.pipeline, "router", self.stage)).started()
        try:  # Redis outages are waited out, vanished groups re-created (core.reconnect)
            Reconnect(self.client, health, stop).run(lambda: self.step(self.settings.block_ms),
                                                     then=self.ensure_groups)
            self.leave()
        finally:
            health.stopped()
            workers.dec()
            log.info("router stopped", extra={"event": "router.stop", "stage": self.stage})

    def ensure_groups(self) -> None:
        for c in self.consumers:
            c.ensure_group()

    def step(self, block_ms: int = 0) -> int:
        """Route one batch (per input); returns how many entries it took. Waits up to `block_ms` when idle."""
        self.before_step()
        return self._server_step(block_ms) if self.server_side else self._python_step(block_ms)

    def _python_step(self, block_ms: int) -> int:
        taken, n = 0, len(self.consumers)
        start, self._round = self._round % n, self._round + 1
        for c in self.consumers[start:] + self.consumers[:start]:  # rotate: no input always goes first
            batch = c.read(self.count, block_ms=block_ms if n == 1 else 0)
            if batch:
                self.route_batch(c, batch)
                taken += len(batch)
        if not taken:
            for c in self.consumers:
                c.maybe_trim()
            if n > 1 and block_ms:
                self._wait(dict(zip([c.stream_key for c in self.consumers], self._delivered(), strict=True)),
                           block_ms)
        return taken

    def _server_step(self, block_ms: int) -> int:
        """One call's worth of routing. Under a backlog (the last call took a full batch) the next call is sent
        before this one's reply is read, so Redis always has one queued (scripts.RouteScript.send); that one is
        the next step's. A step whose call comes back short (caught up) also reads the one sent behind it, so a
        step that returns leaves at most a call of a still-running backlog in flight, and one that returns 0 none."""
        taken = self._reclaim_if_due()
        call, self._inflight = self._inflight or self._send(block_ms, taken), None
        if self._backlog:
            self._inflight = self._send(0, 0)
        try:
            got = self._apply(call)
            taken += got
            if got < call.count and self._inflight is not None:  # caught up: the call behind it finds little
                later, self._inflight = self._inflight, None
                taken += self._apply(later)
        except ResponseError as exc:
            self._drop_inflight()
            if "NOGROUP" not in str(exc):
                raise
            for c in self.consumers:  # an input was deleted (or its group destroyed) under us: start again
                c.ensure_group()
            self._seen, self._backlog = {}, False
        except BaseException:
            self._drop_inflight()
            raise
        return taken

    def _send(self, block_ms: int, taken: int) -> Sent:
        assert self._script is not None
        start, self._round = self._round % len(self.consumers), self._round + 1  # the same rotation as in Python
        order = self.consumers[start:] + self.consumers[:start]
        inputs = [c.stream_key for c in order]
        # Caught up last time: wait inside Redis, in the same round trip as the call (scripts.RouteScript), from
        # where the group was. A backlog (or a step that must not block) calls at once.
        wait = ({k: self._seen[k] for k in inputs}, block_ms) if block_ms and self._seen and not taken else None
        count = self.lua_count
        sent = self._script.send(inputs=inputs, outputs=self.output_keys, tail=self._tail, group=self.stage,
                                 count=count, mode=self.mode, program=self._program,
                                 drop_state=self.drop_state or "", conf={**self.lua_conf(), **self._skip_conf},
                                 wait=wait)
        return Sent(sent, inputs, count, wait is None and not self._backlog, time.perf_counter())

    def _apply(self, sent: Sent) -> int:
        """Read a sent call's reply and account for it; returns the entries it took."""
        r = sent.call.result()
        first = self.consumers[0]  # every consumer of this router has the same metric labels
        first.m_in.inc(r.read)
        first.m_out.inc(r.completed)
        first.m_dead.inc(r.dead)
        self._account(r.filtered, r.spilled)
        for c in self.consumers:
            c.maybe_trim()
        got = r.read + r.skipped
        # The server's clock; the wall time only where a server freezes TIME, and only for a call that was alone
        # on the connection (a wait is no cost of the call, and a queued call's wall includes the one before it).
        wall_us = (time.perf_counter() - sent.began) * 1e6 if sent.alone else 0.0
        self._size_batch(got, sent.count, r.elapsed_us or wall_us)
        # Not a full batch: caught up, so the next step waits first (from where the group is now); a full one
        # leaves a backlog behind it, routed at once.
        self._backlog = got >= sent.count
        self._seen = {} if self._backlog else dict(zip(sent.inputs, r.seen, strict=True))
        return got

    def _drop_inflight(self) -> None:
        """After an error: read (and account for) the call still in flight, if it can be read at all."""
        self._backlog = False
        try:
            self.finish()
        except (RedisError, OSError):
            pass  # it ran whole or not at all; whatever it routed is routed

    def finish(self) -> int:
        """Read the call still in flight, if any (before leaving, or before looking at the streams): the entries
        it took."""
        later, self._inflight = self._inflight, None
        return self._apply(later) if later is not None else 0

    def _size_batch(self, entries: int, count: int, elapsed_us: float) -> None:
        """The next call's count per input under a backlog: past the configured batch (`batch_count()`, the floor:
        a step always takes that many when they are there) as far as `CALL_BUDGET_MS` of Redis time allows at the
        cost per entry measured so far (the least recent calls took, see below),
        up to `max_lua_count()`. A script blocks every other client while it runs: the budget keeps a backlog's
        calls short; at a trickle a call takes what is there, whatever the count. A call of fewer entries than
        min(32, count) is not measured: its fixed cost would pass for a per-entry one."""
        if entries < min(32, count) or elapsed_us <= 0:
            return
        cost = elapsed_us / entries  # the lower envelope: a call stretched by a busy machine (Redis descheduled
        # mid-script) says nothing about the work a call is; a real rise (bigger items) is followed at 10% a call
        self._entry_us = cost if self._entry_us is None else min(cost, self._entry_us * 1.1)
        fit = int(CALL_BUDGET_MS * 1000 / self._entry_us) // len(self.consumers)
        self.lua_count = max(self.count, min(self.max_lua_count(), fit))

    def _reclaim_if_due(self) -> int:
        """Entries a crashed consumer of this stage left pending (the Python path's: a script never leaves any)
        are reclaimed by core and routed on the Python path, with the same decisions."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return 0
        self._next_reclaim = now + max(self.settings.visibility_timeout_ms / 2000, 0.05)
        taken = 0
        for c in self.consumers:
            batch = c.reclaim(self.count)
            if batch:
                self.route_batch(c, batch)
                taken += len(batch)
        return taken

    def route_batch(self, consumer: StreamConsumer, batch: list[Delivery]) -> None:
        """The Python path: decide every delivery, then publish and acknowledge in one core commit."""
        commit = Commit()
        published: list[tuple[str, bytes]] = []
        dropped: list[str] = []
        away: dict[str, list[str]] = {}  # a barrier's skipped set of a batch -> ids sent away from that barrier
        self._spilled = [0] * len(self.outputs)
        for d in batch:
            doc, why = document(d)
            if doc is None:
                commit.dead_letter(d, f"malformed item: {why}")
                continue
            targets = self.decide(doc)
            batch = doc.get("batch")
            if self.skips and isinstance(batch, str) and batch:
                for barrier, outputs in self.skips:
                    if all(t in outputs for t in targets):  # a drop (no target) is away from every barrier
                        away.setdefault(self.keys.barrier(barrier, batch, "skipped"), []).append(doc["id"])
            if targets:
                commit.complete(d)
                published.extend((self.output_keys[t], d.raw) for t in targets)
            else:
                commit.acks.append(d.entry_id)
                dropped.append(doc["id"])
        spilled = self._spilled

        def publish(pipe: Pipeline) -> None:  # raw bytes: the item is passed on exactly as it came
            added: dict[str, int] = {}
            for key, raw in published:
                pipe.xadd(key, {FIELD: raw})
                added[key] = added.get(key, 0) + 1
            for key, n in added.items():
                pipe.hincrby(self.keys.arrivals(), key, n)
            stats = self.keys.stage_stats(self.stage)
            if dropped:
                pipe.hincrby(stats, "filtered", len(dropped))
                if self.drop_state:
                    consumer.progress.mark(dropped, self.drop_state, pipe=pipe)
                if self.on_drop:
                    self.on_drop(pipe, dropped)
            if sum(spilled):
                pipe.hincrby(stats, "spilled", sum(spilled))
            for key, ids in away.items():  # with the acks: routed and recorded together, or neither (SADD: once)
                pipe.sadd(key, *ids)
                pipe.expire(key, BATCH_TTL_S)

        commit.also(publish)
        consumer.commit(commit)
        self._account(len(dropped), spilled)

    def _account(self, filtered: int, spilled: list[int]) -> None:
        if filtered:
            self.m_filtered.inc(filtered)
        for shard, n in enumerate(spilled):
            if n:
                ITEMS_SPILLED.labels(**self.labels, shard=str(shard)).inc(n)

    def _delivered(self) -> list[bytes]:
        """Each input's last id delivered to this group: anything newer is still to be read."""
        pipe = self.client.pipeline(transaction=False)
        for c in self.consumers:
            pipe.xinfo_groups(c.stream_key)
        ids = []
        for groups in pipe.execute():
            mine = [g for g in groups if g["name"] in (self.stage, self.stage.encode())]
            ids.append(mine[0]["last-delivered-id"] if mine else b"0-0")
        return ids

    def caught_up(self) -> bool:
        """Every entry of every input was delivered to this stage and none is still pending (a step can take
        nothing while entries remain: core acknowledges entries addressed to other stages without returning them)."""
        pipe = self.client.pipeline(transaction=False)
        for c in self.consumers:
            pipe.xrevrange(c.stream_key, count=1)
            pipe.xpending(c.stream_key, c.group)
        replies = pipe.execute()
        for top, pending, delivered in zip(replies[0::2], replies[1::2], self._delivered(), strict=True):
            if pending["pending"] or (top and entry_id_key(top[0][0]) > entry_id_key(delivered)):
                return False
        return True

    def _wait(self, after: dict[str, bytes], block_ms: int) -> None:
        """Block until an input has an entry newer than its id in `after` (a wake-up only: XREAD consumes
        nothing, and an entry added since the ids were taken wakes it at once)."""
        self.client.xread(after, count=1, block=block_ms)

    def leave(self) -> None:
        """Drop this consumer from its groups unless it still holds entries (those stay for a replica)."""
        try:
            self.finish()
        except RedisError as exc:
            log.warning("could not read the last route call", extra={
                "event": "router.leave_failed", "stage": self.stage, "error": str(exc)})
        for c in self.consumers:
            try:
                if not c.client.xpending_range(c.stream_key, c.group, min="-", max="+", count=1,
                                               consumername=c.consumer):
                    c.client.xgroup_delconsumer(c.stream_key, c.group, c.consumer)
                c.forget()
            except RedisError as exc:
                log.warning("could not leave the consumer group", extra={
                    "event": "router.leave_failed", "stage": self.stage, "error": str(exc)})


__all__ = ["ROUTERS", "Document", "DropHook", "Router", "document", "register"]
