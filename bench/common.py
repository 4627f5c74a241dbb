"""What the benchmarks share: medians, throwaway pipeline names, listing pages, waiting for progress, clean-up."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis

from services.core import DONE, Keys


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def pipeline_name(prefix: str) -> str:
    """A fresh pipeline name (every key carries it), valid per the spec's name rule."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def listing_item(i: int) -> dict[str, Any]:
    """One listed item with the fields the directory source produces (name, size, mtime, type, uri, version)."""
    size, mtime_ns = 10_000 + i % 5000, 1_700_000_000_000_000_000 + i * 1_000_003
    name = f"photos/{i // 1000:04d}/img-{i:07d}.jpg"
    return {"name": name, "size": size, "mtime": mtime_ns / 1e9, "content_type": "image/jpeg",
            "uri": f"file:///srv/data/{name}", "version": f"{size}-{mtime_ns}"}


def minimal_item(i: int) -> dict[str, Any]:
    """The smallest listed item: a name (the work item's identity), as small as a peer's `noop(i)` job."""
    return {"name": f"noop-{i}"}


def pages(n: int, make: Callable[[int], dict[str, Any]], size: int = 1000, start: int = 0) -> Iterator[list[dict]]:
    """The listing page by page, made on the fly: memory stays bounded by a page, as with the real lister."""
    for first in range(start, start + n, size):
        yield [make(i) for i in range(first, min(first + size, start + n))]


def wait_done(client: redis.Redis, name: str, n: int, *, timeout: float, poll_s: float = 0.001,
              item_s: float = 0.0, alive: Callable[[], bool] | None = None) -> None:
    """Wait until the pipeline's progress counts `n` items done; fail early if `alive()` turns false.

    With `item_s` (a lower bound of an item's time) the waits shrink as the end nears (remaining items x item_s,
    at most 50 ms, at least `poll_s`): few polls, yet the end is seen within `poll_s`. Polling often from the
    process being measured would take its GIL and its CPU from the threads doing the work."""
    key, deadline = Keys(name).counts(), time.monotonic() + timeout
    while (done := int(client.hget(key, DONE) or 0)) < n:
        if alive is not None and not alive():
            raise RuntimeError(f"the consumer of pipeline {name!r} died")
        if time.monotonic() > deadline:
            counts = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
            raise TimeoutError(f"pipeline {name!r}: {counts} after {timeout:.0f}s, wanted {n} done")
        time.sleep(min(0.05, max(poll_s, (n - done) * item_s)))


def drop_pipeline(client: redis.Redis, name: str) -> int:
    """Unlink every key of the pipeline (they all share the `bm:{name}` prefix)."""
    dropped = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{Keys(name).prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            dropped += int(client.unlink(*batch))
            batch.clear()
    if batch:
        dropped += int(client.unlink(*batch))
    return dropped
