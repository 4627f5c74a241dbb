"""The autoscaler: how many replicas a stream work stage needs, by the book's rule (*Designing Distributed Systems*,
ch. 10: a work queue is stable only while processing time ÷ parallelism < interarrival time).

Per stage, from live inputs — arrival rate λ (items/s entering the stage's inputs), service time S (s per item),
backlog B (lag + pending), concurrency c per replica:

    r_rate  = the smallest r with S / (r × c) < ρ / λ        (0 when λ = 0; ρ: utilisation margin, default 0.8)
    r_drain = ceil(B × S / (c × T))                           (drains the backlog within T seconds)
    desired = clamp(r_rate + r_drain, min, max)

then stabilised: a higher recommendation is taken at once; a lower one only as the highest recommendation of the
last W seconds, and at most once per W seconds (the HPA's downscale stabilisation, made strict), so it does not
flap. Until S has been measured (no item finished yet) a stage with work gets one replica: it measures S.

`Rule` and `recommend` are pure, `Stabiliser` and `StageMeter` take an injectable clock; `Autoscaler` is the
manager's glue: every tick it reads the cumulative totals from Redis (arrivals per input stream, the workers'
service time per stage), decides, publishes the decision and its inputs as metrics and in `bm:{p}:autoscale`
(what `status()` reports as `desired_replicas`, and every actuator acts on), and logs one line per change."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import Gauge
from redis import Redis

from services.core import Keys, strict_json
from services.core.metrics import LABELS
from services.core.spec import Pipeline, WorkSpec

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DESIRED = Gauge("batchmesh_autoscaler_desired_replicas", "Replicas the autoscaler decided for the stage "
                "(after stabilisation)", LABELS)
RECOMMENDED = Gauge("batchmesh_autoscaler_recommended_replicas", "The rule's raw recommendation for the stage "
                    "(before stabilisation)", LABELS)
ARRIVAL_RATE = Gauge("batchmesh_autoscaler_arrival_rate", "Arrival rate λ the autoscaler used (items/s)", LABELS)
SERVICE = Gauge("batchmesh_autoscaler_service_seconds", "Service time S per item the autoscaler used (s; -1 while "
                "not measured)", LABELS)
BACKLOG = Gauge("batchmesh_autoscaler_backlog_items", "Backlog B the autoscaler used (lag + pending)", LABELS)

DECISION_TTL_S = 30  # a decision no manager refreshed for this long is gone: status() falls back (see fallback)


@dataclass(frozen=True)
class Rule:
    utilisation: float = 0.8  # ρ: the share of capacity steady arrivals may use
    drain_s: float = 30.0  # T: drain the backlog within this
    window_s: float = 30.0  # W: scale down at most once per W, to the highest recommendation of the last W
    rate_window_s: float = 5.0  # λ is averaged over this

    def __post_init__(self) -> None:
        if not 0 < self.utilisation <= 1 or self.drain_s <= 0 or self.window_s < 0 or self.rate_window_s <= 0:
            raise ValueError(f"invalid autoscaling rule {self}")


def recommend(rule: Rule, *, arrival_rate: float, service_s: float | None, backlog: int, concurrency: int,
              min_replicas: int, max_replicas: int) -> int:
    """The rule's replicas for these inputs, clamped to [min, max] (no stabilisation)."""
    lam, backlog = max(arrival_rate, 0.0), max(backlog, 0)
    if service_s is None:  # nothing measured yet: one replica finds out how slow an item is
        want = 1 if lam > 0 or backlog > 0 else 0
    else:
        s = max(service_s, 0.0)
        load = lam * s / (concurrency * rule.utilisation)  # r must be strictly above this
        r_rate = math.floor(load) + 1 if lam > 0 else 0
        r_drain = math.ceil(backlog * s / (concurrency * rule.drain_s)) if backlog else 0
        want = r_rate + r_drain
    return min(max_replicas, max(min_replicas, want))


def fallback(work: WorkSpec, backlog: int) -> int:
    """Replicas for a stage no autoscaler decided for (no manager running yet): one if it has work."""
    return min(work.replicas.max, max(work.replicas.min, 1 if backlog > 0 else 0))


class Stabiliser:
    """Scale up at once; scale down only to the highest recommendation of the last `window_s`, at most once per
    `window_s`."""

    def __init__(self, window_s: float, clock: Clock = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self.history: deque[tuple[float, int]] = deque()
        self.current: int | None = None
        self.last_down = -math.inf

    def decide(self, recommendation: int) -> int:
        now = self.clock()
        self.history.append((now, recommendation))
        while self.history and self.history[0][0] < now - self.window_s:
            self.history.popleft()
        if self.current is None or recommendation >= self.current:
            self.current = recommendation
        elif now - self.last_down >= self.window_s:
            target = max(r for _, r in self.history)
            if target < self.current:
                self.current, self.last_down = target, now
        return self.current


class StageMeter:
    """λ and S of one stage from cumulative totals (arrivals; service microseconds and items timed). λ is averaged
    over `window_s`; S over the last `service_items` items finished (a time window would over-weight the slow
    stragglers that finish last as a burst drains), and stays at its last value while nothing finishes. A total
    that goes back (Redis restored from an older AOF) starts the averages afresh."""

    def __init__(self, window_s: float, clock: Clock = time.monotonic, service_items: int = 50) -> None:
        self.window_s, self.clock, self.service_items = window_s, clock, service_items
        self.samples: deque[tuple[float, int]] = deque()  # (t, arrivals)
        self.timings: deque[tuple[int, int]] = deque()  # (service_us, timed), one per change of `timed`
        self.service_s: float | None = None

    def update(self, arrivals: int, service_us: int, timed: int) -> tuple[float, float | None]:
        now = self.clock()
        if self.samples and arrivals < self.samples[-1][1]:
            self.samples.clear()
        if self.timings and (timed < self.timings[-1][1] or service_us < self.timings[-1][0]):
            self.timings.clear()
        self.samples.append((now, arrivals))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()
        t0, a0 = self.samples[0]
        rate = (arrivals - a0) / (now - t0) if now > t0 else 0.0
        if not self.timings:
            self.timings.append((service_us, timed))
            if timed and self.service_s is None:  # a restarted manager: the lifetime mean until items finish
                self.service_s = service_us / timed / 1e6
        elif timed > self.timings[-1][1]:
            self.timings.append((service_us, timed))
            while len(self.timings) > 2 and timed - self.timings[1][1] >= self.service_items:
                self.timings.popleft()
            us0, n0 = self.timings[0]
            self.service_s = (service_us - us0) / (timed - n0) / 1e6
        return rate, self.service_s


@dataclass(frozen=True)
class Decision:
    desired: int
    recommended: int
    arrival_rate: float
    service_s: float | None
    backlog: int
    concurrency: int

    def as_json(self) -> str:
        return strict_json.dumps({**asdict(self), "arrival_rate": round(self.arrival_rate, 4),
                           "service_s": None if self.service_s is None else round(self.service_s, 6)})


class StageScaler:
    """One stage: meter, rule, stabiliser."""

    def __init__(self, work: WorkSpec, rule: Rule, clock: Clock = time.monotonic) -> None:
        self.work, self.rule = work, rule
        self.meter = StageMeter(rule.rate_window_s, clock)
        self.stabiliser = Stabiliser(rule.window_s, clock)

    def decide(self, *, arrivals: int, service_us: int, timed: int, backlog: int) -> Decision:
        rate, service = self.meter.update(arrivals, service_us, timed)
        rec = recommend(self.rule, arrival_rate=rate, service_s=service, backlog=backlog,
                        concurrency=self.work.concurrency, min_replicas=self.work.replicas.min,
                        max_replicas=self.work.replicas.max)
        return Decision(self.stabiliser.decide(rec), rec, rate, service, backlog, self.work.concurrency)


class Autoscaler:
    """The manager's autoscaler: every stream work stage, on every tick."""

    def __init__(self, client: Redis, pipeline: Pipeline, rule: Rule | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.client, self.pipeline, self.keys = client, pipeline, Keys(pipeline.name)
        self.rule = rule or Rule()
        self.stages = {name: StageScaler(work, self.rule, clock) for name, work in pipeline.work_stages().items()
                       if work.executor == "stream"}
        self.last: dict[str, int] = {}

    def observe(self, snapshot: dict[str, Any]) -> dict[str, Decision]:
        """Decide for every stream stage from the tick's status snapshot (backlog) and one round trip of totals;
        store the decisions, set `desired_replicas` in the snapshot, publish metrics, log changes."""
        if not self.stages:
            return {}
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.arrivals())
        for name in self.stages:
            pipe.hmget(self.keys.stage_stats(name), "service_us", "timed")
        added_raw, *stats = pipe.execute()
        added = {k.decode(): int(v) for k, v in added_raw.items()}
        decisions: dict[str, Decision] = {}
        for (name, scaler), (service_us, timed) in zip(self.stages.items(), stats, strict=True):
            entry = snapshot["stages"][name]
            arrivals = sum(added.get(self.keys.stream(s), 0) for s in entry["inputs"])
            d = scaler.decide(arrivals=arrivals, service_us=int(service_us or 0), timed=int(timed or 0),
                              backlog=int(entry["backlog"]))
            decisions[name] = d
            entry["desired_replicas"] = d.desired
            entry["autoscale"] = json.loads(d.as_json())
            labels = {"pipeline": self.pipeline.name, "stage": name}
            DESIRED.labels(**labels).set(d.desired)
            RECOMMENDED.labels(**labels).set(d.recommended)
            ARRIVAL_RATE.labels(**labels).set(d.arrival_rate)
            SERVICE.labels(**labels).set(-1 if d.service_s is None else d.service_s)
            BACKLOG.labels(**labels).set(d.backlog)
            if self.last.get(name) != d.desired:
                log.info("autoscaler changed the stage's replicas", extra={
                    "event": "autoscale.change", "stage": name, "from": self.last.get(name), "to": d.desired,
                    "recommended": d.recommended, "arrival_rate": round(d.arrival_rate, 3),
                    "service_s": None if d.service_s is None else round(d.service_s, 4), "backlog": d.backlog,
                    "concurrency": d.concurrency, "utilisation": self.rule.utilisation,
                    "drain_s": self.rule.drain_s, "window_s": self.rule.window_s})
                self.last[name] = d.desired
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.autoscale(), mapping={name: d.as_json() for name, d in decisions.items()})
        pipe.expire(self.keys.autoscale(), DECISION_TTL_S)
        pipe.execute()
        return decisions


def stored_decisions(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """`bm:{p}:autoscale` as read by HGETALL: stage -> decision."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        try:
            out[k.decode()] = json.loads(v)
        except ValueError:
            continue
    return out
