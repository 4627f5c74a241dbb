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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from redis import Redis

from services.core import DONE, Commit, Delivery, Keys, Settings, StreamConsumer, WorkItem
from services.core import metrics as core_metrics
from services.core.batch_decode import deliveries as decode_deliveries
from services.core.health import RoleHealth
from services.core.item import FIELD, encode_json
from services.core.keys import BATCH_TTL_S
from services.core.reconnect import Reconnect

from .barrier_fold import MAX_INCREMENTS, SMALL, Arrival, Entry, Part, Pending, Presum, chunks, raw_size, summed
from .barrier_plan import BarrierPlan
from .barrier_read import light_document
from .barrier_scripts import EMIT, FOLD_SUM, STEP

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.2  # how often recent batches are re-checked when no item arrives
BACKLOG_STEP_S = 1.0  # a step's length under a backlog at most: its last fold overlaps nothing, a long step loses less
RECENT_BATCHES = 20
SWEEP_EVERY_S = 5.0  # how often every open batch is re-checked, not only the recent ones (and at start)
EVENTS_KEPT = 10_000
GATHER_BYTES = 8 * 1024 * 1024


class Barrier:
    kind: ClassVar[str]
    emits_held = False  # a join with `emit: items` passes its items on: they are not done here
    # A step with a backlog reads on (batch_size entries per XREADGROUP) up to this many entries, GATHER_BYTES of
    # items at most: a reduce's pre-summed fold costs per distinct field of a call, which grows slower than items.
    gather: ClassVar[int] = 0

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
        self._folding: ThreadPoolExecutor | None = None  # applies a backlog's parts while the next is read
        self.labels = {"pipeline": settings.pipeline, "stage": stage}

    # -- what a kind defines -------------------------------------------------------------------------------

    def arrival(self, delivery: Delivery) -> Arrival:
        """What the item contributes; raise ValueError to dead-letter it (the reason is the message)."""
        assert delivery.item is not None
        return Arrival(delivery.item.id)

    def arrival_doc(self, doc: dict[str, Any]) -> Arrival | None:
        """The light way (barrier_read): what a plainly valid item's document contributes, or None when the item
        must go the usual way (`arrival`: it may be refused, or needs more than its document)."""
        return None

    def presum_state(self) -> Any:
        """A fresh running sum of a batch's items in a part (Presum), or None: the kind does not pre-sum."""
        return None

    def presum(self, doc: dict[str, Any], raw_bytes: int, into: Presum) -> bool:
        """Add a plainly valid item's increments (its document; its JSON's length) to `into`, when they are all in
        summed's domain; else False and `into` unchanged: `arrival_doc` then takes it, or the usual way."""
        return False

    def presum_fields(self, part: Presum) -> dict[str, int]:
        """A Presum's sums per aggregate field (summed's form)."""
        raise NotImplementedError

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
        size = self.settings.batch_size
        deliveries = self.consumer.read(size, block_ms=block_ms)
        taken = len(deliveries)
        if taken == size and self.gather > size:  # a backlog
            taken = self._take_backlog(deliveries)
        elif deliveries:
            self.take(deliveries)
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + CHECK_EVERY_S
            self.check_recent()
        self.consumer.maybe_trim()
        return taken

    def _take_backlog(self, deliveries: list[Delivery]) -> int:
        """A backlog: read on (batch_size entries per XREADGROUP) into parts of up to `gather` entries (and
        GATHER_BYTES of items), for at most BACKLOG_STEP_S. Each part is applied (its dead letters, its folds, a
        fired batch's output) on the fold thread while this one decodes the next part: Python and Redis overlap.
        The next part is read before a part is handed over: Redis is not busy with that part's fold while this
        thread waits on the read. Parts are applied one at a time, in order, each after the previous one
        finished, exactly as `take` would apply them one after the other; the step returns when every part it
        read is applied. The reads after the first are plain reads of new entries, left undecoded (`_prepare`
        decodes them the light way, barrier_read); a reclaim due ends the step instead (a reclaim never runs
        while a part is in flight: it could take this consumer's own entries of that part back)."""
        until = time.monotonic() + BACKLOG_STEP_S
        part, full = self._read_part(list(deliveries))
        taken, pending = 0, None
        try:
            while part:
                prepared = self._prepare(part)
                taken += len(part)
                part = []
                if full and time.monotonic() < until:
                    part, full = self._read_part([])  # Redis reads it while nothing of ours is running there
                if pending is not None:
                    pending, done = None, pending
                    done.result()  # the previous part is applied (or its error is raised here)
                pending = self._fold_thread().submit(self._apply, *prepared)
        finally:
            if pending is not None:
                pending.result()
        return taken

    def _read_part(self, part: list[Delivery | Entry]) -> tuple[list[Delivery | Entry], bool]:
        """Read on into `part` up to `gather` entries and GATHER_BYTES; (the part, whether the last read was
        full: more may be waiting). A reclaim due stops the reads (not full)."""
        size, held = self.settings.batch_size, sum(raw_size(x) for x in part)
        while len(part) < self.gather and held < GATHER_BYTES:
            ask = min(size, self.gather - len(part))
            more = self.consumer.read_new_fields(ask)
            if more is None:  # a reclaim is due: the next step's read does it, every part applied by then
                return part, False
            part += more
            held += sum(len(fields.get(FIELD) or b"") for _, fields in more)
            if len(more) < ask:
                return part, False
        return part, True

    def _fold_thread(self) -> ThreadPoolExecutor:
        if self._folding is None:
            self._folding = ThreadPoolExecutor(1, thread_name_prefix=f"fold-{self.stage}")
        return self._folding

    def take(self, deliveries: list[Delivery]) -> None:
        self._apply(*self._prepare(deliveries))

    def _prepare(self, deliveries: list[Delivery] | list[Delivery | Entry]) -> tuple[Commit, dict[str, Part]]:
        """What a read does: its dead letters (malformed, no batch, refused by the kind), its arrivals by batch, in
        the read's order. An undecoded entry (`_take_backlog`) whose document the kind folds the light way is not
        decoded further: pre-summed (`presum`) while every item of its batch in the part could be, else
        `arrival_doc`; any other goes the usual way (core.batch_decode)."""
        rejects = Commit()
        by_batch: dict[str, Part] = {}
        presums = self.presum_state() is not None
        for d in deliveries:
            doc: dict[str, Any] | None = None
            if type(d) is tuple:
                light = light_document(d[1])
                if light is None:
                    d = decode_deliveries([d], {})[0]
                else:
                    doc, carrier, size = light[0], Pending(d[0], light[1] + 1), len(d[1][FIELD])
            elif presums and d.item is not None and d.item.batch:  # type: ignore[union-attr]
                item = d.item  # type: ignore[union-attr]
                doc = {"id": item.id, "name": item.id, "data": item.data, "version": item.version, "batch": item.batch}
                carrier, size = d, len(d.raw)  # type: ignore[union-attr]
            if doc is not None:
                batch, part = doc["batch"], by_batch.get(doc["batch"])
                if part is None and presums:
                    part = by_batch[batch] = Presum(self.presum_state())
                if type(part) is Presum:
                    if doc["id"] not in part.ids and self.presum(doc, size, part):
                        part.pending.append(carrier)
                        part.ids[doc["id"]] = None
                        part.docs.append(doc)
                        continue
                    part = by_batch[batch] = part.arrivals(self.arrival_doc)  # the usual form from here on
                if type(d) is tuple:
                    arrival = self.arrival_doc(doc)
                    if arrival is not None and arrival.size <= MAX_INCREMENTS:
                        by_batch.setdefault(batch, []).append((carrier, arrival))  # type: ignore[union-attr]
                        continue
                    d = decode_deliveries([d], {})[0]
            assert isinstance(d, Delivery)
            if d.item is None:
                rejects.dead_letter(d, d.malformed or "malformed item")
            elif not d.item.batch:
                rejects.dead_letter(d, "item has no batch: a barrier counts the batches the manager dispatches")
            else:
                try:
                    arrival = self.arrival(d)
                    if arrival.size > MAX_INCREMENTS:
                        raise ValueError(f"{arrival.size} aggregate entries in one item, at most "
                                         f"{MAX_INCREMENTS:,}: split it upstream")
                    part = by_batch.get(d.item.batch)
                    if type(part) is Presum:
                        part = by_batch[d.item.batch] = part.arrivals(self.arrival_doc)
                    by_batch.setdefault(d.item.batch, []).append((d, arrival))  # type: ignore[union-attr]
                except ValueError as exc:
                    rejects.dead_letter(d, f"{self.kind}: {exc}")
        return rejects, by_batch

    def _apply(self, rejects: Commit, by_batch: dict[str, Part]) -> None:
        self.consumer.commit(rejects)  # dead-lettered items count as resolved for the barrier: before the check
        for batch, arrivals in by_batch.items():
            if not arrivals:  # a Presum that declined its first item, which was then refused
                continue
            if type(arrivals) is Presum:
                fired, late = self._fold_presum(batch, arrivals)
            else:
                fired, late = False, 0
                for chunk in chunks(arrivals):  # type: ignore[arg-type]
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

    def _fold(self, batch: str, arrivals: list[tuple[Delivery | Pending, Arrival]]) -> tuple[bool, int]:
        """Acknowledge and fold `arrivals` (possibly none), then fire if the batch is complete. Returns (fired, how
        many of them were folded late: first arrived after the batch had fired). A chunk of integer increments
        goes the fast way first (summed here, one HINCRBY per field: barrier_scripts.FOLD_SUM), item by item
        (STEP) when that script finds the chunk needs it."""
        if arrivals and not self.emits_held:
            sums = summed(arrivals)
            if sums is not None:
                done = self._fold_sum_call(batch, [d.entry_id for d, _ in arrivals], sums[0], sums[1])
                if done is not None:
                    return done
        return self._fold_items(batch, arrivals)

    def _fold_presum(self, batch: str, part: Presum) -> tuple[bool, int]:
        """A Presum's items: FOLD_SUM (one call: the part's arguments are bounded), or STEP should it decline."""
        done = self._fold_sum_call(batch, [p.entry_id for p in part.pending], part.ids, self.presum_fields(part))
        return done if done is not None else self._fold_items(batch, part.arrivals(self.arrival_doc))

    def _fold_sum_call(self, batch: str, entry_ids: list[bytes], ids: Iterable[str], sums: dict[str, int],
                       ) -> tuple[bool, int] | None:
        """FOLD_SUM of the items (their entry ids, their distinct item ids, their increments summed per field): (fired,
        late), or None when a sum is beyond its domain (SMALL) or the script declines: fold them item by item."""
        if any(not -SMALL < total < SMALL for total in sums.values()):
            return None
        flat: list[str] = []
        for field, total in sums.items():
            flat += (field, str(total))
        ids = list(ids)
        reply = self._fold_sum(keys=self._step_keys(batch), args=[
            *self._step_args(entry_ids), len(ids), *ids, len(sums), *flat])
        if int(reply[0]) < 0:
            return None
        folded, fired, late, _ = reply
        self.consumer.m_out.inc(int(folded))
        return bool(fired), int(late)

    def _step_args(self, entry_ids: list[bytes]) -> list[Any]:
        return [self.stage, "" if self.plan.expected is None else self.plan.expected, f"{time.time():.3f}",
                BATCH_TTL_S, len(entry_ids), *entry_ids]

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

    def _fold_items(self, batch: str, arrivals: list[tuple[Delivery | Pending, Arrival]]) -> tuple[bool, int]:
        """STEP: the arrivals item by item (every case: duplicates, late items, holds, amounts that may fail)."""
        args = self._step_args([d.entry_id for d, _ in arrivals])
        for d, a in arrivals:
            increments = a.all_increments()
            args += [a.id, a.hold, d.deliveries, "1" if a.small else "", len(increments),
                     *(x for inc in increments for x in inc)]
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
