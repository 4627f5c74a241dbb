"""The manager's cluster gauges: what Redis says, whichever process did the work, refreshed on every tick.

Every stage process exports its own counters (core.metrics); the manager adds the cluster-wide view a dashboard or
an autoscaler needs — per stage: lag and pending (`batchmesh_backlog_items` = their sum), arrivals (a counter:
its rate is the arrival rate), live consumers and desired replicas; per pipeline: the current batch's items by
state, whether it is complete, how many batches opened, and Redis memory. Values are read on the tick, never at
scrape time, so a scrape during a Redis outage still answers (with the last values)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge
from redis import Redis

from services.core import Keys, metrics
from services.core.spec import Pipeline

from .report import done_in

LABELS = metrics.LABELS

BATCH_ITEMS = Gauge("batchmesh_batch_items", "Items of the current batch per state (listed, queued, running, done, "
                    "failed, dead)", ("pipeline", "state"))
BATCH_COMPLETE = Gauge("batchmesh_batch_complete", "1 once the current batch is done: listed, nothing in flight, "
                       "every barrier emitted", ("pipeline",))
BATCHES = Counter("batchmesh_batches", "Batches the manager opened", ("pipeline",))
LAG = Gauge("batchmesh_stage_lag_items", "Entries of the stage's inputs not yet delivered to its group", LABELS)
PENDING = Gauge("batchmesh_stage_pending_items", "Entries delivered to the stage and not yet acknowledged", LABELS)
ARRIVALS = Counter("batchmesh_stage_arrivals", "Entries added to the stage's input streams since the pipeline "
                   "started (retries and replays included): its rate is the arrival rate", LABELS)
CONSUMERS = Gauge("batchmesh_stage_consumers", "Consumers of the stage seen within the visibility timeout "
                  "(replicas running)", LABELS)
DESIRED = Gauge("batchmesh_stage_replicas_desired", "Replicas the manager wants for the stage (stream work stages)",
                LABELS)
MEMORY = Gauge("batchmesh_redis_memory_used_bytes", "Redis used_memory (INFO memory)", ("pipeline",))
MEMORY_PEAK = Gauge("batchmesh_redis_memory_peak_bytes", "Redis used_memory_peak (INFO memory)", ("pipeline",))


class _Synced:
    """A prometheus Counter kept equal to a total held in Redis: it only ever grows by the total's increase (a
    Redis total that goes back, e.g. after a restart from an older AOF, is not a counter reset)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.seen: dict[tuple[str, ...], float] = {}

    def sync(self, labels: tuple[str, ...], total: float) -> None:
        last = self.seen.get(labels, 0.0)
        if total > last:
            self.counter.labels(*labels).inc(total - last)
            self.seen[labels] = total


class ClusterGauges:
    """Refreshed by `observe` from the tick's status snapshot plus one round trip of its own."""

    def __init__(self, client: Redis, pipeline: Pipeline, visibility_timeout_s: float) -> None:
        self.client, self.pipeline, self.window_s = client, pipeline, visibility_timeout_s
        self.keys = Keys(pipeline.name)
        self.arrivals, self.batches = _Synced(ARRIVALS), _Synced(BATCHES)

    def observe(self, snapshot: dict[str, Any]) -> None:
        name = snapshot["pipeline"]
        stages = list(snapshot["stages"])
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.arrivals())
        pipe.zcard(self.keys.batches())
        since = time.time() - self.window_s
        for stage in stages:
            pipe.zremrangebyscore(self.keys.alive(stage), "-inf", since - 3600)  # replicas long gone
            pipe.zcount(self.keys.alive(stage), since, "+inf")
        pipe.info("memory")
        replies = pipe.execute()
        added = {k.decode(): int(v) for k, v in replies[0].items()}
        self.batches.sync((name,), int(replies[1]))
        alive = replies[2:2 + 2 * len(stages)][1::2]
        memory = replies[-1]
        MEMORY.labels(name).set(memory["used_memory"])
        MEMORY_PEAK.labels(name).set(memory["used_memory_peak"])
        for state, n in snapshot["counts"].items():
            BATCH_ITEMS.labels(pipeline=name, state=state).set(n)
        BATCH_COMPLETE.labels(name).set(1 if done_in(snapshot) else 0)
        for (stage, entry), consumers in zip(snapshot["stages"].items(), alive, strict=True):
            labels = {"pipeline": name, "stage": stage}
            metrics.BACKLOG.labels(**labels).set(entry["backlog"])
            LAG.labels(**labels).set(entry["lag"])
            PENDING.labels(**labels).set(entry["pending"])
            CONSUMERS.labels(**labels).set(int(consumers))
            if "desired_replicas" in entry:
                DESIRED.labels(**labels).set(entry["desired_replicas"])
            inputs = [self.keys.stream(s) for s in entry["inputs"]]
            self.arrivals.sync((name, stage), sum(added.get(k, 0) for k in inputs))
