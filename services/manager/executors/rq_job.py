"""What an rq worker runs for one item (imported by rq by name: keep this module light — core and rq only).

`run_item` runs the stage's worker command with WORK_ITEM_FILE and records a success the way a stream stage
does (sink: results hash + progress done; else the item goes on to the stage's output stream), in one MULTI.
A failure raises, so rq retries it; `on_failure` runs after every failed attempt: while rq has retries left
the item is marked failed, after the last one it goes to our dead-letter stream and is marked dead — rq's
failures land in the same place as everyone else's."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from services.core import DEAD, DONE, FAILED, RUNNING, Keys, Progress, WorkItem
from services.core.command import run_command
from services.core.deadletter import add_dead_letter
from services.core.item import encode_json
from services.core.metrics import PROCESSING

log = logging.getLogger(__name__)


class ItemFailed(RuntimeError):
    """The worker command failed; the message is the reason (exit code and stderr tail, or the timeout)."""


def run_item(pipeline_name: str, stage: str, argv: list[str], item_json: str, out_dir: str, timeout: float,
             env: dict[str, str], sink: bool) -> dict[str, Any]:
    job = get_current_job()
    assert job is not None, "run_item runs inside an rq job"
    client: Redis = job.connection
    keys = Keys(pipeline_name)
    progress = Progress(client, keys)
    item = WorkItem.model_validate_json(item_json)
    progress.mark([item.id], RUNNING)
    began = time.perf_counter()
    outcome = run_command(argv, item, Path(out_dir) / item.dirname, timeout=timeout, env=env)
    PROCESSING.labels(pipeline=pipeline_name, stage=stage).observe(time.perf_counter() - began)
    if not outcome.ok:
        raise ItemFailed(outcome.reason)
    result = outcome.result or {}
    pipe = client.pipeline(transaction=True)
    if sink:
        pipe.hset(keys.results(), item.id, encode_json(result))
        progress.mark([item.id], DONE, pipe=pipe)
    else:
        pipe.xadd(keys.stream(stage), item.model_copy(update={"data": result, "attempts": 0, "error": None}).encode())
        pipe.hincrby(keys.arrivals(), keys.stream(stage), 1)
    pipe.hincrby(keys.stage_stats(stage), "out", 1)
    pipe.execute()
    return result


def on_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None, exc: BaseException | None,
               tb: TracebackType | None) -> None:
    """rq calls this after every failed attempt, before it decides on a retry (`retries_left` not yet spent)."""
    pipeline_name, stage, _argv, item_json = job.args[:4]
    keys = Keys(pipeline_name)
    progress = Progress(connection, keys)
    item = WorkItem.model_validate_json(item_json)
    reason = str(exc) if isinstance(exc, ItemFailed) else f"{getattr(exc_type, '__name__', 'error')}: {exc}"
    pipe = connection.pipeline(transaction=True)
    pipe.hincrby(keys.stage_stats(stage), "failed", 1)
    if job.retries_left:
        progress.mark([item.id], FAILED, pipe=pipe)
    else:
        max_deliveries = int(job.meta.get("max_deliveries", 1))
        add_dead_letter(pipe, keys, stage=stage, stream=job.meta.get("input", keys.stream(stage)),
                        raw_item=item_json.encode(), reason=reason, deliveries=max_deliveries)
        pipe.hincrby(keys.stage_stats(stage), "dead", 1)
        progress.mark([item.id], DEAD, pipe=pipe)
        log.warning("dead-lettered", extra={"event": "item.dead", "stage": stage, "item": item.id,
                                           "reason": reason[-300:]})
    pipe.execute()
