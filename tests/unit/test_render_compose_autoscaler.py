"""The compose renderer adds the `autoscaler` role (services.autoscaler) only when a stream stage may vary its
replicas (min < max), with the docker socket mounted read-only."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from services.core.spec import Pipeline
from services.render import compose as render

ROOT = Path(__file__).resolve().parents[2]
WORDCOUNT = "examples/wordcount/pipeline.yaml"


def with_replicas(data: dict[str, Any], replicas: Any) -> tuple[dict[str, Any], str]:
    data = copy.deepcopy(data)
    for name, stage in data["stages"].items():
        work = stage.get("work")
        if work is not None and work.get("executor", "stream") == "stream":
            work["replicas"] = replicas
            return data, name
    raise AssertionError("no stream stage in the spec")


def test_an_autoscaled_stage_gets_the_autoscaler_role() -> None:
    base = yaml.safe_load((ROOT / WORDCOUNT).read_text())
    assert "autoscaler" not in render.compose(Pipeline.model_validate(base), WORDCOUNT)["services"]
    data, stage = with_replicas(base, {"min": 1, "max": 4})
    pipeline = Pipeline.model_validate(data)
    assert render.autoscaled(pipeline) == [stage]
    services = render.compose(pipeline, WORDCOUNT)["services"]
    svc = services["autoscaler"]
    assert svc["command"] == ["autoscaler", "--pipeline", WORDCOUNT]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in svc["volumes"]
    assert svc["read_only"] and svc["cap_drop"] == ["ALL"] and svc["group_add"] == ["${BATCHMESH_DOCKER_GID:-0}"]
    assert svc["depends_on"] == {"manager": {"condition": "service_healthy"}}
    manager_env = dict(services["manager"]["environment"])
    assert manager_env.pop("BATCHMESH_SOURCE_TOKEN")  # only the source and the manager hold the source's token
    assert svc["environment"] == manager_env  # the same Redis, the same pipeline
    assert f"worker-{stage}" in services  # the service it scales, one replica to copy from
    fixed, _ = with_replicas(base, {"min": 3, "max": 3})
    assert "autoscaler" not in render.compose(Pipeline.model_validate(fixed), WORDCOUNT)["services"]
