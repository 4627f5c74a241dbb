"""A stage's backlog in `status()` (the runner's exit condition, the stream executor's scaling input) is what
its group has not acknowledged: the same on Redis 6.2 (no group lag, counted from the stream) and 7.0 (group lag,
which also counts entries trimmed before the group read them)."""

from __future__ import annotations

from pathlib import Path

import redis

from services.core import Keys
from services.core.spec import Pipeline
from services.manager import status


def pipeline(name: str, tmp_path: Path) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name,
                                    "source": {"path": str(tmp_path), "poll": 0.2},
                                    "stages": {"work": {"work": {"input": "source", "command": ["true"]}}}})


def test_backlog_is_pending_plus_undelivered_and_forgets_entries_trimmed_before_delivery(
    client: redis.Redis, pipeline_name: str, tmp_path: Path
) -> None:
    spec, stream = pipeline(pipeline_name, tmp_path), Keys(pipeline_name).stream("source")
    client.xgroup_create(stream, "work", id="0", mkstream=True)
    for i in range(10):
        client.xadd(stream, {"item": f'{{"id": "i{i}"}}'})
    client.xreadgroup("work", "c", {stream: ">"}, count=3)
    work = status(client, spec)["stages"]["work"]
    assert (work["length"], work["pending"], work["lag"], work["backlog"]) == (10, 3, 7, 10)
    client.xtrim(stream, maxlen=0)  # someone trimmed it all: nothing is left to deliver, 3 are still pending
    work = status(client, spec)["stages"]["work"]
    assert (work["length"], work["pending"], work["lag"], work["backlog"]) == (0, 3, 0, 3)
