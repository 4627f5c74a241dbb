"""Prometheus metrics, one /metrics per process. Names: batchmesh_<thing>_<unit>, labels pipeline and stage."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("pipeline", "stage")

ITEMS_IN = Counter("batchmesh_items_in", "Items read by a stage", LABELS)
ITEMS_OUT = Counter("batchmesh_items_out", "Items a stage completed (published and acknowledged)", LABELS)
ITEMS_FAILED = Counter("batchmesh_items_failed", "Failed attempts (each retried or dead-lettered)", LABELS)
ITEMS_DEAD = Counter("batchmesh_items_dead_lettered", "Items moved to the dead-letter stream", LABELS)
ITEMS_RECLAIMED = Counter("batchmesh_items_reclaimed", "Entries reclaimed from consumers gone idle", LABELS)
ITEMS_LOST = Counter(
    "batchmesh_items_lost", "Pending entries that were deleted from the stream before being processed", LABELS
)
PROCESSING = Histogram(
    "batchmesh_processing_seconds",
    "Time to process one item",
    LABELS,
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
BACKLOG = Gauge("batchmesh_backlog_items", "Entries not yet acknowledged: lag plus pending", LABELS)
WORKERS = Gauge("batchmesh_workers", "Consumers processing this stage in this process", LABELS)

# Health of this process's role (see core.health and core.reconnect). role: source | manager | router | barrier
# | worker; stage "" for source and manager.
REDIS_UP = Gauge("batchmesh_redis_up", "1 while the role's Redis calls succeed, 0 while it is disconnected",
                 ("pipeline", "role"))
REDIS_DISCONNECTS = Counter("batchmesh_redis_disconnects", "Outages of the role's Redis connection (one per outage, "
                            "not per retry)", ("pipeline", "role"))
ROLE_UP = Gauge("batchmesh_role_up", "1 while the role's main loop runs", ("pipeline", "role", "stage"))


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for each of `values` (one labelled child, e.g. a batch's item times), with one
    increment per bucket hit instead of one bucket walk per value. Falls back to `observe` per value when the
    client library's histogram does not have the attributes this relies on (prometheus_client 0.2x)."""
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    hits: dict[int, int] = {}
    for value in values:  # the first bucket whose upper bound is >= value, as observe() picks it
        i = bisect_left(bounds, value)
        hits[i] = hits.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in hits.items():
        buckets[i].inc(n)


def serve_metrics(port: int) -> None:
    """Expose /metrics and /healthz on `port` (0 = don't); see core.metrics_http."""
    if port:
        from .metrics_http import serve

        serve(port)
