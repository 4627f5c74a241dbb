"""A pipeline's progress as one plain dict — the manager's /api/v1/status, `batchmesh status` and `batchmesh run`
all read it — and `batch_done`, the runner's exit condition."""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from services.core import FAILED, QUEUED, RUNNING, STATES, Keys
from services.core.barriers import barrier_state
from services.core.retry import retry_key
from services.core.spec import Pipeline

from .autoscale import fallback, stored_decisions
from .executors.base import rq_queue_name

LAG_CAP = 10_000  # Redis 6.2 has no group lag: it is counted (server-side) up to this, and estimated beyond

# KEYS: each stage's input stream; ARGV: each stage's group, then LAG_CAP. Returns {length, pending, lag} each.
# lag = entries not yet delivered to the group (Redis 7 reports it; 6.2 counts the entries after the group's
# last-delivered id). Backlog = lag + pending: XLEN alone counts acknowledged entries not yet trimmed too.
# Redis 7.0's lag also counts entries trimmed before the group read them: capped at XLEN (undelivered = in the stream).
_BACKLOG = """
local cap = tonumber(ARGV[#ARGV])
local out = {}
for i, key in ipairs(KEYS) do
  local length, pending, lag = 0, 0, 0
  if redis.call('EXISTS', key) == 1 then
    length = redis.call('XLEN', key)
    lag = length
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      if info['name'] == ARGV[i] then
        pending = tonumber(info['pending'])
        if info['lag'] then
          lag = math.min(tonumber(info['lag']), length)
        else
          lag = #redis.call('XRANGE', key, '(' .. info['last-delivered-id'], '+', 'COUNT', cap)
          if lag >= cap then lag = math.max(lag, length - pending) end
        end
      end
    end
  end
  out[i] = {length, pending, lag}
end
return out
"""


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _batch(raw: dict[bytes, bytes]) -> dict[str, Any]:
    batch: dict[str, Any] = _decode(raw)
    for name in ("listed", "new", "known", "source_skipped"):
        batch[name] = int(batch.get(name, 0) or 0)
    batch["source_skipped_records"] = json.loads(batch.get("source_skipped_records") or "[]")
    batch["complete"] = batch.get("complete") == "1"
    if "updated_at" in batch:
        batch["updated_at"] = float(batch["updated_at"])
    return batch


def status(client: Redis, pipeline: Pipeline) -> dict[str, Any]:
    """Batch manifest, item counts per state, and per stage: out/failed/dead (routers: filtered/spilled too),
    backlog (lag + pending over its inputs), and what its executor reports (desired replicas for stream stages:
    the autoscaler's latest decision; jobs waiting in rq for rq stages). Two round trips."""
    keys = Keys(pipeline.name)
    stages = list(pipeline.stages.items())
    work = pipeline.work_stages()
    barriers = pipeline.barrier_stages()
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.batch())
    pipe.hgetall(keys.counts())
    for name, _ in stages:
        pipe.hgetall(keys.stage_stats(name))
    rq_stages = [name for name, spec in work.items() if spec.executor == "rq"]
    for name in rq_stages:
        pipe.llen(f"rq:queue:{rq_queue_name(pipeline.name, name)}")
    pipe.hgetall(keys.autoscale())
    for name in work:
        pipe.zcard(retry_key(keys, name))
    replies = pipe.execute()
    retrying = dict(zip(reversed(list(work)), [int(replies.pop()) for _ in work], strict=True))
    decisions = stored_decisions(replies.pop())
    reads = [(name, stream) for name, st in stages for stream in st.body.inputs]  # one (group, stream) per input
    backlog = client.register_script(_BACKLOG)(
        keys=[keys.stream(stream) for _, stream in reads], args=[*(name for name, _ in reads), LAG_CAP])
    per_stage: dict[str, list[int]] = {name: [0, 0, 0] for name, _ in stages}
    for (name, _), figures in zip(reads, backlog, strict=True):
        per_stage[name] = [a + int(b) for a, b in zip(per_stage[name], figures, strict=True)]
    batch = _batch(replies[0])
    counts = {state: 0 for state in STATES}
    counts.update({k: int(v) for k, v in _decode(replies[1]).items()})
    rq_waiting = dict(zip(rq_stages, replies[2 + len(stages):], strict=True))
    out: dict[str, Any] = {}
    for (name, stage), raw in zip(stages, replies[2:2 + len(stages)], strict=True):
        length, pending, lag = per_stage[name]
        stats = {k: int(v) for k, v in _decode(raw).items()}
        entry: dict[str, Any] = {
            "kind": stage.kind, "inputs": stage.body.inputs,
            **{k: stats.get(k, 0) for k in ("out", "failed", "dead")},
            "backlog": lag + pending, "lag": lag, "pending": pending, "length": length,
        }
        if stage.kind == "work":
            entry["executor"] = stage.body.executor
            entry["retrying"] = retrying.get(name, 0)  # failed, waiting for their backoff (core.retry)
            if stage.body.executor == "stream":
                decided = decisions.get(name)  # the manager's autoscaler (services.manager.autoscale)
                entry["desired_replicas"] = (int(decided["desired"]) if decided
                                             else fallback(stage.body, entry["backlog"]))
                if decided:
                    entry["autoscale"] = decided
        elif name in barriers:
            entry["barrier"] = barrier_state(client, keys, name, batch["id"]) if batch.get("id") else None
            entry["late"] = stats.get("late", 0)  # items folded after their batch fired, over every batch
        else:
            entry.update({k: stats[k] for k in ("filtered", "spilled") if k in stats})
        if name in rq_waiting:
            entry["rq_queued"] = int(rq_waiting[name])
        out[name] = entry
    snapshot = {
        "pipeline": pipeline.name,
        "batch": batch,
        "counts": {"listed": batch["listed"], **counts},
        "skipped": max(batch["listed"] - batch["new"], 0),
        "stages": out,
    }
    # `done` counts items at their first sink; `batch_done` waits for every branch and barrier too: what a user
    # polling the status API for "finished" wants.
    snapshot["batch_done"] = done_in(snapshot)
    return snapshot


def batch_done(client: Redis, pipeline: Pipeline) -> bool:
    """The current batch's listing was dispatched, no item is queued, running or waiting for a retry, no stage
    has anything in flight (an item copied to two branches is done at its first sink, not yet at the other), and
    every barrier (join, reduce) emitted the batch."""
    return done_in(status(client, pipeline))


def done_in(snapshot: dict[str, Any]) -> bool:
    """`batch_done` judged from a `status()` snapshot already taken."""
    counts = snapshot["counts"]
    return (snapshot["batch"]["complete"] and not any(counts[s] for s in (QUEUED, RUNNING, FAILED))
            and not any(stage["backlog"] or stage.get("retrying") for stage in snapshot["stages"].values())
            and all((stage.get("barrier") or {}).get("emitted") for stage in snapshot["stages"].values()
                    if "barrier" in stage))
