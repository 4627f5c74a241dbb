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
and are only counted (batchmesh_items_lost_total).

Redis 7's XAUTOCLAIM drops a deleted entry from the pending list itself, so a consumer dying between that reclaim
and the retry's commit would leave the item held and nowhere else. So a consumer also sweeps the index now and
then (`sweep`, one script per page): an entry still indexed but neither pending nor in the stream can only be such
an orphan (a commit acknowledges and un-indexes in one MULTI), and once it has been one for ORPHAN_AGE_S the
script puts its item into the retry set, due at once, and un-indexes it, in one step (the delivery cap is not
charged for a deletion the item did not cause). An item kept without its data is left for the log.

The index is written as a hash table, never as Redis' compact small-hash encoding (ziplist/listpack, used for a
hash of at most `hash-max-ziplist-entries` = 512 fields whose fields and values are all at most
`hash-max-ziplist-value` = 64 bytes: the usual no-op batch of 256 small items). In that encoding every HSET field
scans the whole list and every HDEL moves its tail, so holding and releasing a batch cost O(batch²): about half
of Redis' work per item on the worker side (callgrind). An HSET with one field longer than that limit makes Redis
convert the hash first, and a hash table stays one until the hash is deleted; so the hold sets `WIDE` (a field no
entry id can be) with its fields and deletes it in the same MULTI/EXEC: nobody ever sees it, the index holds what
it held. With a bigger server limit the hint does nothing and the index is as before."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError

from .item import FIELD, MalformedItem, WorkItem
from .keys import Keys
from .progress import RUNNING
from .wire import Sent, Wire, packed

# KEYS: held hash, stream, retry set, suspects hash. ARGV: group, min age (ms), entry ids...
# An orphan is requeued on the first sweep that finds it orphaned for min age already (the first sighting only
# notes it in the suspects hash): a live consumer's own recovery, between its reclaim and its commit, takes
# milliseconds, so the two never both requeue an item. Returns how many orphans were requeued.
_SWEEP = """
local t = redis.call('TIME')
local now, moved = t[1] * 1000 + math.floor(t[2] / 1000), 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], id)
  if raw and #redis.call('XPENDING', KEYS[2], ARGV[1], id, id, 1) == 0
      and #redis.call('XRANGE', KEYS[2], id, id) == 0 then
    local seen = redis.call('HGET', KEYS[4], id)
    if not seen then
      redis.call('HSET', KEYS[4], id, now)
    elseif now - tonumber(seen) >= tonumber(ARGV[2]) then
      if not string.find(raw, '"_held_truncated":true', 1, true) then
        redis.call('ZADD', KEYS[3], now, raw)
        moved = moved + 1
      end
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[4], id)
    end
  else
    redis.call('HDEL', KEYS[4], id)
  end
end
return moved
"""
SWEEP_PAGE = 500
SWEEP_EVERY_S = 10.0  # how often one consumer sweeps a page of the index
ORPHAN_AGE_S = 5.0  # an orphan is requeued once it has been one this long

if TYPE_CHECKING:
    from .stage import Delivery, StreamConsumer

HELD_MAX = 64 * 1024  # bytes of an encoded item kept whole in the index
WIDE = b"~batchmesh:held:encoding-hint:" + b"~" * 40  # 70 bytes (> 64): set and deleted in the hold's MULTI
LOST = "entry lost: deleted from the stream while pending (XDEL or MAXLEN trimming), before it was processed"


class Held:
    def __init__(self, client: Redis, keys: Keys, stage: str) -> None:
        from .retry import retry_key

        self.client, self.key, self.retry_key = client, f"{keys.prefix}:held:{stage}", retry_key(keys, stage)
        self._sweep = client.register_script(_SWEEP)
        self._cursor, self._next_sweep = 0, 0.0

    def maybe_sweep(self, stream_key: str, group: str) -> int:
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY_S
        return self.sweep(stream_key, group)

    def sweep(self, stream_key: str, group: str, min_age_s: float = ORPHAN_AGE_S) -> int:
        """Requeue one page of orphaned held items (see the module docstring). Returns how many."""
        self._cursor, page = self.client.hscan(self.key, self._cursor, count=SWEEP_PAGE)
        if not page:
            return 0
        return int(self._sweep(keys=[self.key, stream_key, self.retry_key, self.key + ":suspects"],
                               args=[group, int(min_age_s * 1000), *page]))

    def hold(self, consumer: StreamConsumer, deliveries: list[Delivery]) -> None:
        """The items are being processed: mark them running and index their entries (one round trip)."""
        reply = self.send_hold(consumer, deliveries)
        if reply is not None:
            reply.wait()

    def send_hold(self, consumer: StreamConsumer, deliveries: list[Delivery], *,
                  running: bool = True) -> HoldReply | None:
        """`hold`, in two halves: the same commands are sent now, and their replies are read by
        `HoldReply.wait()`, which the caller calls before the batch's commit (the commit goes on the same
        connection pool, after it). So Redis applies the hold while the items run, instead of the worker waiting
        for it first. An error reply raises at `wait()`, before anything is committed: the batch stays pending
        and is reclaimed, as when `hold` raises. None: nothing to hold.

        `running=False`: the index only; the caller marks the items running later, if at all (`running_command`).
        """
        commands = self._hold_commands(consumer, deliveries, running=running)
        return HoldReply(Wire(self.client).send_packed(packed(commands), len(commands), commands)) if commands else None

    def running_command(self, consumer: StreamConsumer, deliveries: list[Delivery]) -> tuple[object, ...] | None:
        """The mark running of the well-formed `deliveries` (core.progress's script, keep-terminal: a late mark
        never undoes a done item), as one command to send; None if there is none."""
        ids = [d.item.id for d in deliveries if d.item is not None]
        return consumer.progress.command(ids, RUNNING) if ids else None

    def _hold_commands(self, consumer: StreamConsumer, deliveries: list[Delivery], *,
                       running: bool = True) -> list[tuple[object, ...]]:
        """Mark running (core.progress's script) and HSET of the held index, for the well-formed deliveries."""
        ids: list[str] = []
        held: list[bytes] = []
        for d in deliveries:
            if d.item is not None:
                ids.append(d.item.id)
                raw = d.raw
                held += (d.entry_id, raw if len(raw) <= HELD_MAX else _kept(d))
        commands: list[tuple[object, ...]] = []
        if running and ids:
            commands.append(consumer.progress.command(ids, RUNNING))
        if held:  # a hash table from the first field on, WIDE never seen (see the module docstring)
            commands += [("MULTI",), ("HSET", self.key, WIDE, b"", *held), ("HDEL", self.key, WIDE), ("EXEC",)]
        return commands

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


class HoldReply:
    """The replies of a hold sent by `Held.send_hold` (core.wire), read when the caller needs them."""

    def __init__(self, sent: Sent) -> None:
        self._sent = sent

    def wait(self) -> None:
        """Read the replies; raises the first error reply (a ResponseError, also one inside EXEC's reply) or a
        connection error."""
        for reply in self._sent.replies():
            if isinstance(reply, ResponseError):
                raise reply
            if type(reply) is list:  # EXEC's: one reply per queued command
                for inner in reply:
                    if isinstance(inner, ResponseError):
                        raise inner
        # (a nil EXEC reply cannot happen: nothing is WATCHed on the connection)

    def abandon(self) -> None:
        """The batch failed before `wait()`: drop the connection (its replies unread)."""
        self._sent.abandon()


def _kept(delivery: Delivery) -> bytes:
    if len(delivery.raw) <= HELD_MAX:
        return delivery.raw
    item = delivery.item
    assert item is not None
    return item.model_copy(update={"data": {"_held_truncated": True}}).encode()[FIELD]
