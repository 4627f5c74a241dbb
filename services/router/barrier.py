"""What join and reduce share (book ch. 12): a stage that waits for a whole batch.

Items are read with the stage's consumer group like any stage; each batch's arrivals are folded into Redis
(a set of ids already in, a reduce's aggregate hash, a join's held items) and acknowledged in one script, so
folding is exactly once under retries, reclaims and restarts of the barrier itself. The barrier fires when the
manager's manifest of the batch is complete and every item in it has arrived, was dead-lettered upstream
(those are reported, the barrier does not hang) or was skipped — dropped by a filter before it, or routed by a
splitter or sharder down a branch that does not lead to it, recorded by that router in the barrier's `skipped`
set of the batch in the same atomic step as the routing (core.spec_skips; counted as `skipped` in the summary);
it never fires early and emits exactly once: an output on its
own stream, and a batch-complete event on the pipeline's events stream that dependent pipelines wait for.

Besides arrivals, the barrier re-checks the recent batches a few times a second: a batch can become complete
without any item arriving (the last one dead-lettered upstream, an empty batch)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from redis import Redis

from services.core import DONE, Commit, Delivery, Keys, Settings, StreamConsumer, WorkItem
from services.core import metrics as core_metrics
from services.core.health import RoleHealth
from services.core.item import encode_json
from services.core.keys import BATCH_TTL_S
from services.core.reconnect import Reconnect
from services.core.spec import Pipeline

from .barrier_scripts import EMIT, FOLD_SUM, STEP

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.2  # how often recent batches are re-checked when no item arrives
RECENT_BATCHES = 20
SWEEP_EVERY_S = 5.0  # how often every open batch is re-checked, not only the recent ones (and at start)
# Redis takes at most 1,048,576 arguments per command (6.2 resets the connection beyond): a step's script calls
# stay well below, however many words a batch of files brings.
MAX_ARGS = 250_000
MAX_INCREMENTS = (MAX_ARGS - 1000) // 3
EVENTS_KEPT = 10_000


@dataclass(frozen=True)
class BarrierPlan:
    """What a barrier needs from the whole pipeline graph."""

    dead_stages: list[str]  # whose dead-lettered items of a batch it stops waiting for
    expected: int | None  # a fixed number of arrivals per batch (partial aggregates), else the manifest's items
    read: bool  # some stage reads its output stream
    siblings: list[str]  # sharded reducers: an item another of them folded is not coming here
    reported: list[str] | None = None  # whose dead-lettered items it reports as failed (default: dead_stages)

    @classmethod
    def of(cls, pipeline: Pipeline, stage: str) -> BarrierPlan:
        sources = pipeline.barrier_sources(stage)
        siblings = pipeline.barrier_siblings(stage)
        upstream = pipeline.upstream(pipeline.stages[stage].body.input) | {stage}
        # A merging reduce waits for its partials: only a partial dead-lettered after its barrier is not coming,
        # never an item dead-lettered before (counting those would fire it early). A sharded reducer does not
        # wait for an item its sibling dead-lettered (a bad value) either.
        def through(name: str) -> set[str]:
            return pipeline.upstream(pipeline.stages[name].body.input) | {name}

        before = set().union(*(through(s) for s in sources))
        beside = set().union(*(through(s) for s in siblings))  # a sibling's map dead-letters items of this batch
        return cls(sorted((upstream - before) | beside), len(sources) if sources else None,
                   bool(pipeline.readers(stage)), siblings, sorted(upstream | beside))


@dataclass
class Arrival:
    """One item's part of a step: its id, the raw item to hold (join, emit: items), its aggregate increments."""

    id: str
    hold: bytes = b""
    increments: tuple[tuple[str, str, int | float], ...] = ()  # (op 'i' | 'f', field, amount): router.reduce

    @property
    def small(self) -> bool:
        """Every amount is below 1e300 in magnitude: no increment can fail (barrier_scripts.STEP)."""
        return all(-_SMALL < amount < _SMALL if op == "i" else abs(amount) < 1e300
                   for op, _, amount in self.increments)


class Barrier:
    kind: ClassVar[str]
    emits_held = False  # a join with `emit: items` passes its items on: they are not done here

    def __init__(self, client: Redis, settings: Settings, stage: str, spec: Any, plan: BarrierPlan, *,
                 consumer: str | None = None) -> None:
        self.client, self.settings, self.stage, self.spec, self.plan = client, settings, stage, spec, plan
        self.keys = Keys(settings.pipeline)
        self.consumer = StreamConsumer(client, settings, stage=stage, input_stream=spec.input,
                                       consumer=consumer or f"{socket.gethostname()}-{os.getpid()}-"
                                                            f"{uuid.uuid4().hex[:6]}")
        self._step = client.register_script(STEP)
        self._fold_sum = client.register_script(FOLD_SUM)
        self._emit = client.register_script(EMIT)
        self._done: set[str] = set()  # batches this process saw emitted: no need to look at them again
        self._next_check = 0.0
        self._next_sweep = 0.0
        self.labels = {"pipeline": settings.pipeline, "stage": stage}

    # -- what a kind defines -------------------------------------------------------------------------------

    def arrival(self, delivery: Delivery) -> Arrival:
        """What the item contributes; raise ValueError to dead-letter it (the reason is the message)."""
        assert delivery.item is not None
        return Arrival(delivery.item.id)

    def output(self, batch: str, summary: dict[str, Any]) -> dict[str, Any]:
        """The data of the item put on the stage's stream when the batch is complete."""
        return summary

    def emitted(self, batch: str, data: dict[str, Any]) -> None:
        """Called once the batch's output is out (a reduce writes its file)."""

    def idle(self, batch: str) -> None:
        """Called on every check of a batch not yet complete (a reduce writes its running aggregate)."""

    def late(self, batch: str, n: int) -> None:
        """Called after `n` items were folded into a batch that had already fired (a replay, a slow retry). They
        count once each (the batch's set of ids in guards it) and show as the batch's `late` count; the output and
        the batch-complete event are not sent again. A reduce rewrites its aggregate file."""
        log.info("late items folded into a fired batch", extra={"event": "barrier.late", "stage": self.stage,
                                                                "batch": batch, "items": n})

    # -- running -------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, health: RoleHealth | None = None) -> None:
        log.info("barrier started", extra={"event": "barrier.start", "stage": self.stage, "kind": self.kind,
                                           "input": self.spec.input, "consumer": self.consumer.consumer})
        workers = core_metrics.WORKERS.labels(**self.labels)
        workers.inc()
        health = (health or RoleHealth(self.settings.pipeline, "barrier", self.stage)).started()
        try:  # Redis outages are waited out, a vanished group re-created (core.reconnect); each step is atomic
            Reconnect(self.client, health, stop).run(
                lambda: self.step(min(self.settings.block_ms, int(CHECK_EVERY_S * 1000))),
                then=self.consumer.ensure_group)
            self.consumer.forget()
        finally:
            health.stopped()
            workers.dec()
            log.info("barrier stopped", extra={"event": "barrier.stop", "stage": self.stage})

    def step(self, block_ms: int = 0) -> int:
        """Fold one batch of arrivals, then re-check recent batches when due. Returns entries taken."""
        deliveries = self.consumer.read(self.settings.batch_size, block_ms=block_ms)
        if deliveries:
            self.take(deliveries)
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + CHECK_EVERY_S
            self.check_recent()
        self.consumer.maybe_trim()
        return len(deliveries)

    def take(self, deliveries: list[Delivery]) -> None:
        rejects = Commit()
        by_batch: dict[str, list[tuple[Delivery, Arrival]]] = defaultdict(list)
        for d in deliveries:
            if d.item is None:
                rejects.dead_letter(d, d.malformed or "malformed item")
            elif not d.item.batch:
                rejects.dead_letter(d, "item has no batch: a barrier counts the batches the manager dispatches")
            else:
                try:
                    arrival = self.arrival(d)
                    if len(arrival.increments) > MAX_INCREMENTS:
                        raise ValueError(f"{len(arrival.increments)} aggregate entries in one item, at most "
                                         f"{MAX_INCREMENTS:,}: split it upstream")
                    by_batch[d.item.batch].append((d, arrival))
                except ValueError as exc:
                    rejects.dead_letter(d, f"{self.kind}: {exc}")
        self.consumer.commit(rejects)  # dead-lettered items count as resolved for the barrier: before the check
        for batch, arrivals in by_batch.items():
            fired, late = False, 0
            for chunk in _chunks(arrivals):
                now_fired, now_late = self._fold(batch, chunk)
                fired, late = fired or now_fired, late + now_late
            if fired:
                self._finish(batch)
            if late:
                self.late(batch, late)

    def check_recent(self) -> None:
        """Re-check the recent batches and, every SWEEP_EVERY_S, every batch not yet emitted: an old batch (many
        batches opened since) whose last item is dead-lettered late gets no arrival that would fire it."""
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + SWEEP_EVERY_S
        for batch in self.client.zrange(self.keys.batches(), 0 if sweep else -RECENT_BATCHES, -1):
            batch = batch.decode()
            if batch in self._done:
                continue
            if self._fold(batch, [])[0]:
                self._finish(batch)
            else:
                self.idle(batch)

    def _fold(self, batch: str, arrivals: list[tuple[Delivery, Arrival]]) -> tuple[bool, int]:
        """Acknowledge and fold `arrivals` (possibly none), then fire if the batch is complete. Returns (fired, how
        many of them were folded late: first arrived after the batch had fired). A chunk of integer increments
        goes the fast way first (summed here, one HINCRBY per field: barrier_scripts.FOLD_SUM), item by item
        (STEP) when that script finds the chunk needs it."""
        if arrivals and not self.emits_held:
            sums = _summed(arrivals)
            if sums is not None:
                flat: list[bytes] = []
                for field, total in sums[1].items():
                    flat += (field.encode(), b"%d" % total)
                reply = self._fold_sum(keys=self._step_keys(batch), args=[
                    *self._step_args(arrivals), len(sums[0]), *sums[0], len(sums[1]), *flat])
                if int(reply[0]) >= 0:
                    folded, fired, late, _ = reply
                    self.consumer.m_out.inc(int(folded))
                    return bool(fired), int(late)
        return self._fold_items(batch, arrivals)

    def _step_args(self, arrivals: list[tuple[Delivery, Arrival]]) -> list[Any]:
        return [self.stage, "" if self.plan.expected is None else self.plan.expected, f"{time.time():.3f}",
                BATCH_TTL_S, len(arrivals), *(d.entry_id for d, _ in arrivals)]

    def _step_keys(self, batch: str) -> list[str]:
        k = self.keys
        return [self.consumer.stream_key, k.stage_stats(self.stage), k.barrier(self.stage, batch, "in"),
                k.barrier(self.stage, batch, "agg"), k.barrier(self.stage, batch, "held"),
                k.barrier(self.stage, batch, "state"), k.manifest(batch), k.batch_items(batch),
                k.barrier(self.stage, batch, "scratch"), self._output_key(), k.arrivals(),
                k.dead_letters(self.stage), k.states(), k.counts(), k.derived(), k.batch_dead(batch, self.stage),
                *(k.batch_dead(batch, s) for s in self.plan.dead_stages),
                *(k.barrier(sibling, batch, "in") for sibling in self.plan.siblings),
                *([k.barrier(self.stage, batch, "skipped")] if self.plan.expected is None else [])]  # spec_skips

    def _fold_items(self, batch: str, arrivals: list[tuple[Delivery, Arrival]]) -> tuple[bool, int]:
        """STEP: the arrivals item by item (every case: duplicates, late items, holds, amounts that may fail)."""
        args = self._step_args(arrivals)
        for d, a in arrivals:
            args += [a.id, a.hold, d.deliveries, "1" if a.small else "", len(a.increments),
                     *(x for inc in a.increments for x in inc)]
        keys = self._step_keys(batch)
        pipe = self.client.pipeline(transaction=True)
        self._step(keys=keys, args=args, client=pipe)
        if arrivals and not self.emits_held:  # the items end here (a join releasing them passes them on)
            self.consumer.progress.mark([a.id for _, a in arrivals], DONE, pipe=pipe)
        (folded, fired, late, dead), *_ = pipe.execute()
        if arrivals:
            self.consumer.m_out.inc(int(folded))
        if dead:  # an item whose increments could not all be applied (the fold's numeric rule, router.reduce)
            self.consumer.m_dead.inc(int(dead))
            log.warning("dead-lettered at the fold", extra={"event": "item.dead", "stage": self.stage,
                                                           "batch": batch, "items": int(dead)})
        return bool(fired), int(late)

    def _finish(self, batch: str) -> None:
        """Emit the fired batch's output, once (a replica or a restart that races here finds it emitted)."""
        summary = self.summary(batch)
        data = self.output(batch, summary)
        item = WorkItem(id=f"{batch}/{self.stage}", data=data, batch=batch)
        event = {"pipeline": self.settings.pipeline, "stage": self.stage, "kind": self.kind, **summary}
        emitted = self._emit(keys=[self.keys.barrier(self.stage, batch, "state"), self._output_key(),
                                   self.keys.barrier(self.stage, batch, "held"), self.keys.events(),
                                   self.keys.derived(), self.keys.arrivals(),
                                   self.keys.barrier(self.stage, batch, "in"),
                                   self.keys.barrier(self.stage, batch, "agg")],
                             args=[f"{time.time():.3f}", "held" if self.emits_held else "item",
                                   encode_json(item.model_dump(exclude_defaults=True)), encode_json(event),
                                   EVENTS_KEPT, item.id, BATCH_TTL_S])
        self._done.add(batch)
        if emitted:
            log.info("batch complete", extra={"event": "barrier.fired", "stage": self.stage, "batch": batch,
                                              "items": summary["items"], "failed": summary["failed_count"]})
            self.emitted(batch, data)

    def _output_key(self) -> str:
        """The stage's stream, or (nobody reads it) the events stream, which the scripts then do not write to."""
        return self.keys.stream(self.stage) if self.plan.read else self.keys.events()

    def summary(self, batch: str) -> dict[str, Any]:
        """How the batch went: items expected, arrived, and the ids dead-lettered on the way (at most 1000)."""
        k = self.keys
        state = {key.decode(): v.decode() for key, v in self.client.hgetall(k.barrier(self.stage, batch,
                                                                                        "state")).items()}
        dead_keys = [k.batch_dead(batch, s) for s in self.plan.reported or self.plan.dead_stages]
        dead = sorted(m.decode() for m in self.client.sunion(dead_keys)) if dead_keys else []
        if dead:
            arrived = self.client.smismember(k.barrier(self.stage, batch, "in"), dead)
            dead = [d for d, seen in zip(dead, arrived, strict=True) if not seen]
        skipped = self.client.scard(k.barrier(self.stage, batch, "skipped")) if self.plan.expected is None else 0
        return {"batch": batch, "items": int(state.get("expected", 0)), "done": int(state.get("arrived", 0)),
                "failed": dead[:1000], "failed_count": len(dead), "skipped": int(skipped)}  # skipped: spec_skips


_SMALL = 10**299  # integer amounts and sums below this in magnitude: FOLD_SUM's domain (router.reduce's "small")


def _summed(arrivals: list[tuple[Delivery, Arrival]]) -> tuple[list[str], dict[str, int]] | None:
    """The chunk's distinct item ids (first copy of each) and the sum of their increments per field, when every
    increment is an integer and every sum is below 1e299 in magnitude (else None: item by item; an integer amount
    never fails by itself, only a sum reaching the range where a double field could overflow).
    Integer sums are exact in any order: summing the chunk first gives STEP's result with one HINCRBY per field."""
    ids: dict[str, None] = {}
    sums: defaultdict[str, int] = defaultdict(int)
    for _, a in arrivals:
        if a.id in ids:
            continue  # a duplicate within the chunk: acknowledged, folded once
        if a.hold:
            return None
        ids[a.id] = None
        for op, field, amount in a.increments:
            if op != "i":
                return None
            sums[field] += amount  # type: ignore[assignment]
    if any(not -_SMALL < total < _SMALL for total in sums.values()):
        return None
    return list(ids), sums


def _chunks(arrivals: list[tuple[Delivery, Arrival]]) -> list[list[tuple[Delivery, Arrival]]]:
    """Split a step's arrivals into script calls of at most MAX_ARGS arguments (each call acknowledges and folds its
    own items, so a split changes nothing but the number of calls)."""
    chunks: list[list[tuple[Delivery, Arrival]]] = [[]]
    size = 0
    for pair in arrivals:
        cost = 6 + 3 * len(pair[1].increments)
        if chunks[-1] and size + cost > MAX_ARGS - 1000:
            chunks.append([])
            size = 0
        chunks[-1].append(pair)
        size += cost
    return chunks
