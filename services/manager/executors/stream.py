"""`stream`: long-lived `batchmesh worker` replicas consume the stage's stream; the manager runs nothing. It
reports how many replicas the backlog asks for, which the local runner and KEDA scale on."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import Gauge

from services.core.metrics import LABELS
from services.core.spec import WorkSpec

from .base import Executor

DESIRED = Gauge("batchmesh_desired_replicas", "Worker replicas the stage's backlog asks for", LABELS)


def desired_replicas(work: WorkSpec, backlog: int) -> int:
    """clamp(min, max, ceil(backlog / (concurrency * 4))): a replica keeps ~4 batches of its slots queued."""
    want = math.ceil(max(backlog, 0) / (work.concurrency * 4))
    return min(work.replicas.max, max(work.replicas.min, want))


class StreamExecutor(Executor):
    name = "stream"

    def observe(self, stage_status: dict[str, Any]) -> None:
        DESIRED.labels(**self.labels).set(desired_replicas(self.ctx.work, int(stage_status.get("backlog", 0))))
