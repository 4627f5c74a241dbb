"""Redis key names. Every key of a pipeline carries the hash tag {pipeline}, so a pipeline's streams share one
Redis Cluster slot and multi-key transactions and scripts stay legal there."""

from __future__ import annotations

BATCH_TTL_S = 14 * 86400  # a batch's keys (manifest, dead sets, barrier state) expire this long after it opened


class Keys:
    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.prefix = f"bm:{{{pipeline}}}"

    def stream(self, name: str) -> str:
        """The stream a stage reads from or writes to."""
        return f"{self.prefix}:s:{name}"

    def dead_letters(self, stage: str) -> str:
        return f"{self.prefix}:dlq:{stage}"

    def states(self) -> str:
        """Hash item id -> state record (see core.progress)."""
        return f"{self.prefix}:state"

    def versions(self) -> str:
        """Hash item id -> source version last dispatched (a changed version is work again)."""
        return f"{self.prefix}:version"

    def derived(self) -> str:
        """Set of the ids of items barriers made (batch events, aggregates): not tracked as the batch's items."""
        return f"{self.prefix}:derived"

    def counts(self) -> str:
        """Hash state -> number of items in it."""
        return f"{self.prefix}:counts"

    def results(self) -> str:
        """Hash item id -> result JSON of the final stage."""
        return f"{self.prefix}:results"

    def batch(self) -> str:
        """Hash describing the current batch (listing complete, how many items)."""
        return f"{self.prefix}:batch"

    def batches(self) -> str:
        """Sorted set batch id -> time opened: every batch the manager announced."""
        return f"{self.prefix}:batches"

    def manifest(self, batch: str) -> str:
        """Hash of one batch: opened, listed, items, complete (1 once its listing was dispatched)."""
        return f"{self.prefix}:b:{batch}"

    def batch_items(self, batch: str) -> str:
        """Set of the item ids dispatched in one batch: what a barrier waits for."""
        return f"{self.prefix}:b:{batch}:items"

    def batch_dead(self, batch: str, stage: str) -> str:
        """Set of a batch's item ids dead-lettered at one stage: a barrier downstream stops waiting for them."""
        return f"{self.prefix}:b:{batch}:dead:{stage}"

    def barrier(self, stage: str, batch: str, part: str) -> str:
        """A join's or reduce's state for one batch: `state` hash, `in` set of folded ids, `agg` hash, `held`
        hash of items held until the barrier."""
        return f"{self.prefix}:j:{stage}:{batch}:{part}"

    def schedule(self) -> str:
        """Hash of the manager's schedule state (the cursor into the events of the pipeline it runs after)."""
        return f"{self.prefix}:schedule"

    def events(self) -> str:
        """Stream of batch-complete events (one per barrier and batch): what dependent pipelines wait for."""
        return f"{self.prefix}:events"

    def arrivals(self) -> str:
        """Hash stream key -> entries ever XADDed to it (incremented with every XADD, in the same transaction or
        script): a stage's arrivals counter is the sum over its inputs (batchmesh_stage_arrivals_total)."""
        return f"{self.prefix}:arrivals"

    def autoscale(self) -> str:
        """Hash stage -> the autoscaler's latest decision (JSON: desired, inputs), refreshed by the manager on
        every tick and expiring when no manager refreshes it (services.manager.autoscale)."""
        return f"{self.prefix}:autoscale"

    def alive(self, stage: str) -> str:
        """Sorted set consumer name -> last heartbeat (Unix seconds) of the stage's live consumers."""
        return f"{self.prefix}:alive:{stage}"

    def stage_stats(self, stage: str) -> str:
        """Hash in/out/failed/dead -> count for one stage, updated inside its commits."""
        return f"{self.prefix}:stats:{stage}"
