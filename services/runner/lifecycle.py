"""A pipeline's state across runs, as the CLI shows it: what a replay will do to barriers that already fired
(`batchmesh dlq replay`), which roles are alive, and `batchmesh reset` (delete every key of the pipeline)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from redis import Redis

from services.core import Keys, Settings, WorkItem
from services.core.barriers import barrier_state
from services.core.spec import Pipeline

UNLINK_BATCH = 500  # keys per UNLINK: a large pipeline's reset never blocks Redis for long


def _barriers_reached(pipeline: Pipeline, stage: str) -> list[str]:
    """The barriers an item put back on `stage`'s input reaches first (a barrier after a barrier only sees the
    first one's output, which a late item does not change — except a join releasing its items)."""
    barriers = pipeline.barrier_stages()

    def through(name: str) -> set[str]:
        return set().union(*(pipeline.upstream(s) for s in pipeline.stages[name].body.inputs)) | {name}

    reached = [b for b in barriers if stage in through(b)]
    stops = [b for b in reached if not (pipeline.stages[b].kind == "join" and barriers[b].emit == "items")]
    return [b for b in reached if not any(c != b and c in through(b) for c in stops)]


def _fate(pipeline: Pipeline, barrier: str, fired: bool) -> str:
    body = pipeline.stages[barrier].body
    kind = pipeline.stages[barrier].kind
    if not fired:
        return f"the {kind} `{barrier}` has not fired for it yet: they count towards the batch"
    if kind == "reduce":
        then = f"{body.write} rewritten" if body.write else "its aggregate in Redis updated"
        return f"the reduce `{barrier}` already fired: they will be folded as late items and {then}"
    if body.emit == "items":
        return f"the join `{barrier}` already released the batch: they will be passed on as late items"
    return (f"the join `{barrier}` already fired: they will be counted as late items (`batchmesh status`: late); "
            f"its event is not sent again")


def describe_replay(client: Redis, pipeline: Pipeline, replayed: dict[str, list[WorkItem]]) -> list[str]:
    """One line per (stage, batch) of replayed items: how many, and what each barrier they reach will do."""
    keys = Keys(pipeline.name)
    lines = []
    for stage, items in replayed.items():
        for batch, n in sorted(Counter(item.batch for item in items).items()):
            where = f"batch {batch}" if batch else "no batch"
            fates = [_fate(pipeline, b, bool(batch) and barrier_state(client, keys, b, batch)["fired"])
                     for b in _barriers_reached(pipeline, stage)] if batch else []
            lines.append("; ".join([f"{n} item(s) of stage {stage} replayed into {where}", *fates]))
    return lines


def late_notes(pipeline: Pipeline, status: dict[str, Any], baseline: dict[str, dict[str, Any]]) -> list[str]:
    """What a run says about late items: per barrier, how many it folded in this run into batches that had
    already fired (replayed items of an earlier run's batch), and what it did with them."""
    notes = []
    for name in pipeline.barrier_stages():
        late = int(status["stages"].get(name, {}).get("late", 0)) - int(baseline.get(name, {}).get("late", 0))
        if late > 0:
            body, kind = pipeline.stages[name].body, pipeline.stages[name].kind
            then = f": {body.write} rewritten with them" if kind == "reduce" and body.write else ""
            notes.append(f"{kind} `{name}`: {late} late item(s) folded into a batch that had already fired{then}")
    return notes


def _pattern(keys: Keys) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", keys.prefix) + ":*"


def pipeline_keys(client: Redis, keys: Keys) -> Iterator[bytes]:
    """Every key of the pipeline (SCAN, never KEYS: Redis keeps answering others meanwhile)."""
    yield from client.scan_iter(match=_pattern(keys), count=1000)


def alive_roles(client: Redis, pipeline: Pipeline, settings: Settings) -> dict[str, int]:
    """Stage -> consumers that sent a heartbeat within the stage's visibility timeout (a run is using them)."""
    keys, now = Keys(pipeline.name), time.time()
    defaults = pipeline.defaults  # what every role of the pipeline runs with (manager.executors.stage_settings)
    window = defaults.visibility_timeout if "visibility_timeout" in defaults.model_fields_set else \
        settings.visibility_timeout_ms / 1000
    pipe = client.pipeline(transaction=False)
    for name in pipeline.stages:
        pipe.zcount(keys.alive(name), now - window, "+inf")
    return {name: int(n) for name, n in zip(pipeline.stages, pipe.execute(), strict=True) if n}


def reset(client: Redis, keys: Keys) -> int:
    """Delete every key of the pipeline, UNLINK_BATCH at a time. Returns how many were removed."""
    removed, chunk = 0, []
    for key in pipeline_keys(client, keys):
        chunk.append(key)
        if len(chunk) >= UNLINK_BATCH:
            removed += int(client.unlink(*chunk))
            chunk = []
    if chunk:
        removed += int(client.unlink(*chunk))
    return removed
