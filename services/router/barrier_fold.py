"""What a barrier's fold is made of (services.router.barrier): one item's arrival, the pre-summed form of a
chunk of them (barrier_scripts.FOLD_SUM) or of a part's items summed as they are decoded (Presum), and the split
of a step into script calls of bounded size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.core import Delivery
from services.core.item import FIELD

# Redis takes at most 1,048,576 arguments per command (6.2 resets the connection beyond): a step's script calls
# stay well below, however many words a batch of files brings.
MAX_ARGS = 250_000
MAX_INCREMENTS = (MAX_ARGS - 1000) // 3
Entry = tuple[bytes, dict[bytes, bytes]]  # an undecoded stream entry (StreamConsumer.read_new_fields)


@dataclass(slots=True)
class Pending:
    """The delivery of an entry read undecoded: what a fold needs of it."""

    entry_id: bytes
    deliveries: int


def raw_size(x: Delivery | Entry) -> int:
    return len(x.raw) if isinstance(x, Delivery) else len(x[1].get(FIELD) or b"")


@dataclass
class Arrival:
    """One item's part of a step: its id, the raw item to hold (join, emit: items), its aggregate increments."""

    id: str
    hold: bytes = b""
    increments: tuple[tuple[str, str, int | float], ...] = ()  # (op 'i' | 'f', field, amount): router.reduce
    ints: dict[str, int] | None = None  # or, when every amount is an integer: {field: amount} (router.reduce)

    def all_increments(self) -> tuple[tuple[str, str, int | float], ...]:
        """The increments in STEP's form, whichever form the arrival carries them in."""
        if self.ints is None:
            return self.increments
        return tuple(("i", field, amount) for field, amount in self.ints.items())

    @property
    def size(self) -> int:
        """How many aggregate entries the item adds to."""
        return len(self.increments) if self.ints is None else len(self.ints)

    @property
    def small(self) -> bool:
        """Every amount is below 1e300 in magnitude: no increment can fail (barrier_scripts.STEP)."""
        return all(-SMALL < amount < SMALL if op == "i" else abs(amount) < 1e300
                   for op, _, amount in self.all_increments())


SMALL = 10**299  # integer amounts and sums below this in magnitude: FOLD_SUM's domain (router.reduce's "small")


def summed(arrivals: list[tuple[Delivery | Pending, Arrival]]) -> tuple[list[str], dict[str, int]] | None:
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
        if a.ints is not None:
            for field, amount in a.ints.items():
                sums[field] += amount
            continue
        for op, field, amount in a.increments:
            if op != "i":
                return None
            sums[field] += amount  # type: ignore[assignment]
    if any(not -SMALL < total < SMALL for total in sums.values()):
        return None
    return list(ids), sums


def chunks(arrivals: list[tuple[Delivery | Pending, Arrival]]) -> list[list[tuple[Delivery | Pending, Arrival]]]:
    """Split a step's arrivals into script calls of at most MAX_ARGS arguments (each call acknowledges and folds its
    own items, so a split changes nothing but the number of calls)."""
    chunks: list[list[tuple[Delivery | Pending, Arrival]]] = [[]]
    size = 0
    for pair in arrivals:
        cost = 6 + 3 * pair[1].size
        if chunks[-1] and size + cost > MAX_ARGS - 1000:
            chunks.append([])
            size = 0
        chunks[-1].append(pair)
        size += cost
    return chunks


class Presum:
    """A part's light items of one batch (Barrier._take_backlog), pre-summed as they are decoded, for a kind that
    can (Reduce.presum: the same domain as summed's): their deliveries and ids in read order (every id once: a
    second copy makes the batch go the usual way), their documents (for STEP, should FOLD_SUM decline), the kind's
    running sums (`state`, its own layout) and the arguments the items cost (at most one script call's)."""

    __slots__ = ("cost", "docs", "ids", "pending", "state")

    def __init__(self, state: Any) -> None:
        self.pending: list[Pending | Delivery] = []
        self.ids: dict[str, None] = {}
        self.docs: list[dict[str, Any]] = []
        self.state, self.cost = state, 0

    def arrivals(self, arrival_doc: Callable[[dict[str, Any]], Arrival | None],
                 ) -> list[tuple[Pending | Delivery, Arrival]]:
        """The items in the usual form (`arrival_doc` takes every document `presum` took)."""
        out: list[tuple[Pending | Delivery, Arrival]] = []
        for pending, doc in zip(self.pending, self.docs, strict=True):
            arrival = arrival_doc(doc)
            assert arrival is not None, doc["id"]
            out.append((pending, arrival))
        return out


Part = list[tuple[Delivery | Pending, Arrival]] | Presum  # a part's arrivals of one batch (Barrier._prepare)
