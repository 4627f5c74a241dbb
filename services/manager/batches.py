"""Batches: each listing pass that dispatches something (and the first pass of a manager, and every scheduled
run) is its own batch. Its manifest — which items, how many, whether the listing is complete — is what barriers
(join, reduce) wait for; the `current` hash is what `status` and `batchmesh run` show."""

from __future__ import annotations

import secrets
import time
from typing import Any

from redis import Redis

from services.core import strict_json
from services.core.keys import BATCH_TTL_S, Keys


def new_batch_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def announce(client: Redis, keys: Keys, batch: str) -> None:
    """Make `batch` the current one and known to barriers (its manifest is incomplete until `close`)."""
    now = f"{time.time():.3f}"
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.manifest(batch), mapping={"opened": now, "complete": 0})
    pipe.expire(keys.manifest(batch), BATCH_TTL_S)
    pipe.zremrangebyscore(keys.batches(), "-inf", time.time() - BATCH_TTL_S)  # their keys have expired
    pipe.zadd(keys.batches(), {batch: time.time()})
    pipe.delete(keys.batch())
    pipe.hset(keys.batch(), mapping={"id": batch, "listed": 0, "new": 0, "known": 0, "complete": 0, "updated_at": now})
    pipe.execute()


def current(client: Redis, keys: Keys) -> tuple[str, bool] | None:
    """The current batch (the `batch` hash): its id and whether its listing was dispatched; None if there is none
    (`batchmesh run` deletes it before it starts the manager)."""
    raw_id, complete = client.hmget(keys.batch(), "id", "complete")
    return None if raw_id is None else (raw_id.decode(), complete == b"1")


def close(client: Redis, keys: Keys, batch: str, listed: int, *, recount: bool = False) -> int:
    """The listing was dispatched: the manifest is complete, barriers may fire. Returns the batch's item count.
    `recount`: the batch was resumed by a restarted manager, whose listing counted its predecessor's dispatches as
    known: `new` becomes the batch's item count, `known` the rest of the listing."""
    now = f"{time.time():.3f}"
    items = int(client.scard(keys.batch_items(batch))) if recount else 0
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.manifest(batch), mapping={"listed": listed, "complete": 1, "closed": now})
    pipe.hset(keys.batch(), mapping={"listed": listed, "complete": 1, "updated_at": now})
    if recount:
        pipe.hset(keys.batch(), mapping={"new": items, "known": max(listed - items, 0)})
    pipe.expire(keys.batch_items(batch), BATCH_TTL_S)
    pipe.scard(keys.batch_items(batch))
    return int(pipe.execute()[-1])


SKIPPED_KEPT = 100  # records kept per batch for the summary and manifest.json (the count is exact)


def record_skipped(client: Redis, keys: Keys, batch: str, skipped: list[dict[str, Any]]) -> None:
    """What the source could not serve in this batch's listing: `source_skipped` (a count) and
    `source_skipped_records` (JSON, the first SKIPPED_KEPT) in the manifest and the current-batch hash."""
    fields = {"source_skipped": len(skipped),
              "source_skipped_records": strict_json.dumps(skipped[:SKIPPED_KEPT], ensure_ascii=True)}
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.manifest(batch), mapping=fields)
    pipe.hset(keys.batch(), mapping=fields)
    pipe.execute()


def recent(client: Redis, keys: Keys, count: int = 20) -> list[str]:
    """The latest batches, oldest first."""
    return [b.decode() for b in client.zrange(keys.batches(), -count, -1)]
