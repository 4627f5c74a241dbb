"""Dead-letter streams: one per stage, each entry the item as it was, why it failed, and how often it was tried."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from .item import FIELD, TO, WorkItem
from .keys import BATCH_TTL_S, Keys
from .masking import scrub
from .progress import QUEUED, Progress


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    stage: str
    stream: str
    reason: str
    deliveries: int
    raw_item: bytes
    at: float

    @property
    def item_id(self) -> str | None:
        item = _decoded(self.raw_item)
        return item.id if item is not None else None


def _decoded(raw_item: bytes) -> WorkItem | None:
    try:
        return WorkItem.decode({FIELD: raw_item})
    except ValueError:
        return None


def add_dead_letter(
    pipe: Pipeline, keys: Keys, *, stage: str, stream: str, raw_item: bytes, reason: str, deliveries: int
) -> None:
    """Queue the XADD on a transaction pipeline: it commits together with the XACK of the original. An item of a
    batch is also noted in the batch's dead set of this stage, so barriers downstream stop waiting for it."""
    item = _decoded(raw_item)
    if item is not None and item.batch:
        pipe.sadd(keys.batch_dead(item.batch, stage), item.id)
        pipe.expire(keys.batch_dead(item.batch, stage), BATCH_TTL_S)
    pipe.xadd(
        keys.dead_letters(stage),
        {
            FIELD: raw_item,
            b"reason": scrub(reason).encode()[:4000],  # no secret of ours in a reason (core.masking)
            b"stream": stream.encode(),
            b"deliveries": str(deliveries).encode(),
            b"at": f"{time.time():.3f}".encode(),
        },
    )


def list_dead_letters(client: Redis, keys: Keys, stage: str, count: int = 1000, start: str = "-") -> list[DeadLetter]:
    """The first `count` dead letters of a stage, from the entry id `start` on (a time: `<ms>-0`)."""
    out = []
    for entry_id, fields in client.xrange(keys.dead_letters(stage), min=start, count=count):
        out.append(
            DeadLetter(
                entry_id=entry_id.decode(),
                stage=stage,
                stream=fields.get(b"stream", b"").decode(),
                reason=fields.get(b"reason", b"").decode(errors="replace"),
                deliveries=int(fields.get(b"deliveries", b"0")),
                raw_item=fields.get(FIELD, b""),
                at=float(fields.get(b"at", b"0")),
            )
        )
    return out


def dead_letter_stages(client: Redis, keys: Keys) -> list[str]:
    prefix = keys.dead_letters("")
    return sorted(k.decode()[len(prefix):] for k in client.scan_iter(match=f"{prefix}*", count=1000))


def replay(client: Redis, keys: Keys, stage: str, entry_ids: list[str] | None = None,
           replayed: list[WorkItem] | None = None) -> int:
    """Put dead letters back on the stream they came from, with a fresh delivery budget. Returns how many.

    Each move (XADD back, XDEL from the dead-letter stream, state back to queued) is one transaction, so an
    entry is never both replayed and still dead-lettered. The replay is addressed to `stage`: other stages reading
    the same stream already had the item. Malformed items cannot be replayed and stay. A barrier that already
    fired for the item's batch folds the replayed item as late (router.barrier). Each item put back is appended to
    `replayed` if given."""
    progress = Progress(client, keys)
    moved = 0
    for letter in list_dead_letters(client, keys, stage, count=100_000):
        if entry_ids is not None and letter.entry_id not in entry_ids:
            continue
        item = _decoded(letter.raw_item)
        if item is None:
            continue
        fresh = item.model_copy(update={"attempts": 0, "error": None})
        pipe = client.pipeline(transaction=True)
        pipe.xadd(letter.stream, {**fresh.encode(), TO: stage.encode()})
        pipe.hincrby(keys.arrivals(), letter.stream, 1)
        pipe.xdel(keys.dead_letters(stage), letter.entry_id)
        progress.mark([item.id], QUEUED, pipe=pipe, force=True)
        if item.batch:  # in flight again: a barrier waits for it once more
            pipe.srem(keys.batch_dead(item.batch, stage), item.id)
        pipe.execute()
        moved += 1
        if replayed is not None:
            replayed.append(item)
    return moved
