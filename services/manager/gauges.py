"""The manager's gauges, refreshed from a status snapshot on every tick."""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

from services.core import metrics

ITEMS = Gauge("batchmesh_items", "Items per progress state (and listed) in the current batch", ("pipeline", "state"))


def observe(snapshot: dict[str, Any]) -> None:
    pipeline = snapshot["pipeline"]
    for state, n in snapshot["counts"].items():
        ITEMS.labels(pipeline=pipeline, state=state).set(n)
    for stage, entry in snapshot["stages"].items():
        metrics.BACKLOG.labels(pipeline=pipeline, stage=stage).set(entry["backlog"])
