"""`stream`: long-lived `batchmesh worker` replicas consume the stage's stream; the manager runs nothing. It
reports how many replicas the autoscaler decided (services.manager.autoscale), which the local runner, the compose
autoscaler and KEDA scale on."""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

from services.core.metrics import LABELS

from .base import Executor

DESIRED = Gauge("batchmesh_desired_replicas", "Worker replicas the autoscaler decided for the stage (deprecated: "
                "batchmesh_stage_replicas_desired)", LABELS)


class StreamExecutor(Executor):
    name = "stream"

    def observe(self, stage_status: dict[str, Any]) -> None:
        if "desired_replicas" in stage_status:
            DESIRED.labels(**self.labels).set(int(stage_status["desired_replicas"]))
