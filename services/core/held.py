"""The held index: which item each pending entry of a work stage carries, so an entry deleted from the stream while
pending (an XDEL, an outside MAXLEN) does not lose its item.

A deleted entry comes back from XAUTOCLAIM as nil (Redis 6.2) or as a bare id (Redis 7): its item is gone from
the stream, and without it the item stays `running` for ever — the run, and every later run over the same input
(the manager sees it still in flight), waits until its timeout. So when a work stage's consumer takes entries
in hand it also writes `bm:{p}:held:<stage>` (hash entry id -> the encoded item, HELD_MAX bytes at most, else
the item without its data), and the commit that acknowledges them deletes those fields in the same MULTI.
When a reclaim reports entries lost, their items are read from here and failed like any failed delivery, with
the reason "entry lost: ...": retried with backoff (core.retry) while deliveries remain, else dead-lettered with
that reason, which tells the barriers downstream not to wait for it (core.deadletter). An item too large to be
kept whole is dead-lettered at once (a replay of it would have no data). Entries lost at routers have no index
and are only counted (batchmesh_items_lost_total)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis import Redis
from redis.client import Pipeline

from .item import FIELD, MalformedItem, WorkItem
from .keys import Keys
from .progress import RUNNING

if TYPE_CHECKING:
    from .stage import Delivery, StreamConsumer

HELD_MAX = 64 * 1024  # bytes of an encoded item kept whole in the index
LOST = "entry lost: deleted from the stream while pending (XDEL or MAXLEN trimming), before it was processed"


class Held:
    def __init__(self, client: Redis, keys: Keys, stage: str) -> None:
        self.client, self.key = client, f"{keys.prefix}:held:{stage}"

    def hold(self, consumer: StreamConsumer, deliveries: list[Delivery]) -> None:
        """The items are being processed: mark them running and index their entries (one round trip)."""
        items = [d for d in deliveries if d.item is not None]
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        consumer.progress.mark([d.item.id for d in items if d.item is not None], RUNNING, pipe=pipe)
        pipe.hset(self.key, mapping={d.entry_id: _kept(d) for d in items})
        pipe.execute()

    def release(self, pipe: Pipeline, entry_ids: list[bytes]) -> None:
        """In the commit acknowledging `entry_ids`: they are no longer held."""
        pipe.hdel(self.key, *entry_ids)

    def recover(self, consumer: StreamConsumer, entry_ids: list[bytes], *, still_pending: bool = False) -> set[bytes]:
        """Fail the items of lost entries (retry or dead-letter, with the reason), acknowledging them in the same
        commit if `still_pending` (else they are gone from the pending list already). Returns the ids handled."""
        from .stage import Commit, Delivery

        if not entry_ids:
            return set()
        commit = Commit(gone=set() if still_pending else set(entry_ids))
        handled: set[bytes] = set()
        for entry_id, raw in zip(entry_ids, self.client.hmget(self.key, entry_ids), strict=True):
            if raw is None:
                continue
            handled.add(entry_id)
            try:
                item = WorkItem.decode({FIELD: raw})
            except MalformedItem:
                commit.acks.append(entry_id)  # nothing to retry: acknowledged (if still pending) and released
                continue
            delivery = Delivery(entry_id, item, item.attempts + 1, raw)
            if item.data.get("_held_truncated"):
                commit.dead_letter(delivery, LOST + "; too large to keep, so not retried")
            else:
                commit.fail(delivery, LOST)
        if commit:
            consumer.commit(commit)
        return handled


def _kept(delivery: Delivery) -> bytes:
    if len(delivery.raw) <= HELD_MAX:
        return delivery.raw
    item = delivery.item
    assert item is not None
    return item.model_copy(update={"data": {"_held_truncated": True}}).encode()[FIELD]
