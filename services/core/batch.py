"""What a stage's batch is made of: the deliveries read (`Delivery`) and the outcome to commit (`Commit`), which
`core.stage.StreamConsumer.commit` applies in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from redis.client import Pipeline

from .item import WorkItem


@dataclass(slots=True)
class Delivery:
    """One entry handed to this consumer. `item` is None when the entry is malformed (`malformed` says why)."""

    entry_id: bytes
    item: WorkItem | None
    deliveries: int
    raw: bytes = b""
    malformed: str | None = None


@dataclass
class Commit:
    """What one batch did. Applied by `StreamConsumer.commit` in a single transaction."""

    acks: list[bytes] = field(default_factory=list)
    outputs: list[tuple[str, WorkItem]] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    retries: list[tuple[Delivery, str]] = field(default_factory=list)
    actions: list[Callable[[Pipeline], None]] = field(default_factory=list)
    sink_results: dict[str, bytes] = field(default_factory=dict)
    completed: int = 0
    gone: set[bytes] = field(default_factory=set)  # entries deleted while pending (core.held): nothing to XACK
    stats: list[tuple[str, int]] = field(default_factory=list)  # more increments of the stage's stats hash

    def complete(self, delivery: Delivery, *outputs: tuple[str, WorkItem]) -> None:
        """The item is done here: publish `outputs` (stream name, item) and acknowledge it."""
        self.acks.append(delivery.entry_id)
        self.outputs.extend(outputs)
        self.completed += 1

    def fail(self, delivery: Delivery, reason: str) -> None:
        """The attempt failed: retry it, or dead-letter it once its deliveries are used up."""
        self.retries.append((delivery, reason))

    def record(self, delivery: Delivery, result: bytes) -> None:
        """The item is done at a sink: store its result (JSON) and mark it done, with the ack."""
        assert delivery.item is not None, "malformed deliveries are dead-lettered, never recorded"
        self.complete(delivery)
        self.sink_results[delivery.item.id] = result

    def record_many(self, deliveries: list[Delivery], result: bytes) -> None:
        """`record` of each of `deliveries` (in order), all with the same result."""
        ids = [d.item.id for d in deliveries if d.item is not None]
        assert len(ids) == len(deliveries), "malformed deliveries are dead-lettered, never recorded"
        self.acks += [d.entry_id for d in deliveries]
        self.completed += len(deliveries)
        self.sink_results.update(dict.fromkeys(ids, result))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.dead.append((delivery, reason))

    def also(self, action: Callable[[Pipeline], None]) -> None:
        """Add commands (e.g. a result write) to the same transaction."""
        self.actions.append(action)

    def __bool__(self) -> bool:
        return bool(self.acks or self.outputs or self.dead or self.retries or self.actions or self.sink_results
                    or self.stats)
