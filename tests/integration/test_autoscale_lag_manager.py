"""The lag policy is a real actuator path: a manager started with BATCHMESH_AUTOSCALE_POLICY=lag decides by
KEDA's ceil(lag / lagCount) from the live status, stores it where every actuator reads it (status()'s
desired_replicas, bm:{p}:autoscale) and logs the change with its policy. Real Redis."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from services.core import Keys, Settings, WorkItem
from services.core.spec import Pipeline
from services.manager import status
from services.manager.autoscale import LagScaler
from services.manager.manager import Manager


def test_a_lag_policy_manager_scales_on_the_groups_lag(client: redis.Redis, settings: Settings,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    name = settings.pipeline
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                        "stages": {"w": {"work": {"input": "source", "worker": "noop",
                                                                  "concurrency": 2,
                                                                  "replicas": {"min": 1, "max": 6}}}}})
    keys = Keys(name)
    client.xgroup_create(keys.stream("source"), "w", id="0", mkstream=True)
    for i in range(40):  # 40 entries never delivered: lag 40, lagCount 2 x 4 = 8 -> 5 replicas
        client.xadd(keys.stream("source"), WorkItem(id=f"i{i}", data={}).encode())
    manager = Manager(client, pipeline, settings.model_copy(update={"autoscale_policy": "lag"}), "http://unused")
    try:
        [scaler] = manager.autoscaler.stages.values()
        assert isinstance(scaler, LagScaler) and scaler.lag_count == 8
        caplog.set_level(logging.INFO, logger="services.manager.autoscale")
        [d] = manager.autoscaler.observe(status(client, pipeline)).values()
        assert d.desired == 5 and d.recommended == 5  # +4 from min 1 in one step: within the rate limit
        assert status(client, pipeline)["stages"]["w"]["desired_replicas"] == 5  # what the actuators read
        assert json.loads(client.hget(keys.autoscale(), "w"))["desired"] == 5
        change = [r for r in caplog.records if getattr(r, "event", "") == "autoscale.change"][-1]
        assert change.policy == "lag" and change.lag_count == 8 and change.to == 5
    finally:
        manager.http.close()
