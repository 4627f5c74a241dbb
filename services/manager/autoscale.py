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


@dataclass(frozen=True)
class LagRule:
    """The plain lag-threshold policy KEDA users configure today, with the behaviour we render for it
    (services/render/k8s_scalers.py: KEDA's `redis-streams` trigger, the HPA behaviour under `advanced`):

        replicas = ceil(lag / lag_count)      lag: entries not yet delivered to the group (XINFO GROUPS' lag)

    re-read every `polling_s` (KEDA's pollingInterval), inside the HPA's 10 % tolerance kept as is, clamped to
    [max(min, 1), max] while active (lag > 0 within the last `cooldown_s`; else `min`, which may be 0); scale-up
    at most `up_pods` per `up_period_s`, scale-down to the highest recommendation of the last `window_s`
    (stabilizationWindowSeconds), at most `down_pods` per `down_period_s`. `lag_count` 0: concurrency × 4, as
    rendered. Selected by BATCHMESH_AUTOSCALE_POLICY=lag (the book's `Rule` is the default)."""

    lag_count: int = 0
    polling_s: float = 10.0
    window_s: float = 120.0
    down_pods: int = 1
    down_period_s: float = 60.0
    up_pods: int = 4
    up_period_s: float = 15.0
    cooldown_s: float = 300.0
    tolerance: float = 0.1
    rate_window_s: float = 5.0  # λ is still measured (and published), not used

    def __post_init__(self) -> None:
        if self.lag_count < 0 or self.polling_s < 0 or self.window_s < 0 or self.down_pods < 1 \
                or self.up_pods < 1 or not 0 <= self.tolerance < 1:
            raise ValueError(f"invalid lag autoscaling rule {self}")


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


class LagScaler:
    """One stage under the lag policy (`LagRule`); the same inputs and Decision as StageScaler, plus `lag`."""

    def __init__(self, work: WorkSpec, rule: LagRule, clock: Clock = time.monotonic) -> None:
        self.work, self.rule, self.clock = work, rule, clock
        self.lag_count = rule.lag_count or work.concurrency * 4
        self.meter = StageMeter(rule.rate_window_s, clock)
        self.recs: deque[tuple[float, int]] = deque()
        self.changes: deque[tuple[float, int]] = deque()  # (t, replicas added (+) or removed (-)): rate limits
        self.current = work.replicas.min  # what the Deployment starts with
        self.last_poll, self.last_active = -math.inf, -math.inf
        self.rec = work.replicas.min

    def _limited(self, now: float, target: int) -> int:
        """The HPA's rate limits: replicas at the period's start (current minus what was added / plus what was
        removed within the period) ± the pods allowed per period."""
        current = self.current
        horizon = max(self.rule.up_period_s, self.rule.down_period_s)
        while self.changes and self.changes[0][0] <= now - horizon:
            self.changes.popleft()
        if target > current:
            added = sum(d for t, d in self.changes if d > 0 and t > now - self.rule.up_period_s)
            return max(current, min(target, current - added + self.rule.up_pods))
        removed = sum(-d for t, d in self.changes if d < 0 and t > now - self.rule.down_period_s)
        return min(current, max(target, current + removed - self.rule.down_pods))

    def decide(self, *, arrivals: int, service_us: int, timed: int, backlog: int, lag: int = 0) -> Decision:
        now = self.clock()
        rate, service = self.meter.update(arrivals, service_us, timed)
        work = self.work
        if now - self.last_poll >= self.rule.polling_s:  # KEDA reads the lag once per pollingInterval
            self.last_poll = now
            if lag > 0:
                self.last_active = now
            if now - self.last_active >= self.rule.cooldown_s:
                self.rec = work.replicas.min  # inactive (never active, or past KEDA's cooldown): min, maybe 0
            else:
                cur = self.current
                ratio = max(lag, 0) / (self.lag_count * cur) if cur else math.inf  # the HPA's usage ratio
                want = cur if abs(ratio - 1) <= self.rule.tolerance else math.ceil(max(lag, 0) / self.lag_count)
                self.rec = min(work.replicas.max, max(work.replicas.min, 1, want))
            self.recs.append((now, self.rec))
            while self.recs and self.recs[0][0] < now - self.rule.window_s:
                self.recs.popleft()
            # the HPA: up to the recommendation at once (up-window 0); down only to the window's highest
            target = self.rec if self.rec >= self.current else min(self.current, max(r for _, r in self.recs))
            if target != self.current:
                new = self._limited(now, target)
                if new != self.current:
                    self.changes.append((now, new - self.current))
                    self.current = new
        return Decision(self.current, self.rec, rate, service, backlog, work.concurrency)


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

    def decide(self, *, arrivals: int, service_us: int, timed: int, backlog: int, lag: int = 0) -> Decision:
        rate, service = self.meter.update(arrivals, service_us, timed)
        rec = recommend(self.rule, arrival_rate=rate, service_s=service, backlog=backlog,
                        concurrency=self.work.concurrency, min_replicas=self.work.replicas.min,
                        max_replicas=self.work.replicas.max)
        return Decision(self.stabiliser.decide(rec), rec, rate, service, backlog, self.work.concurrency)


class Autoscaler:
    """The manager's autoscaler: every stream work stage, on every tick."""

    def __init__(self, client: Redis, pipeline: Pipeline, rule: Rule | LagRule | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.client, self.pipeline, self.keys = client, pipeline, Keys(pipeline.name)
        self.rule = rule or Rule()
        rule_ = self.rule
        self.stages: dict[str, StageScaler | LagScaler] = {
            name: LagScaler(work, rule_, clock) if isinstance(rule_, LagRule) else StageScaler(work, rule_, clock)
            for name, work in pipeline.work_stages().items() if work.executor == "stream"}
        self.policy = "lag" if isinstance(rule_, LagRule) else "book"
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
                              backlog=int(entry["backlog"]), lag=int(entry.get("lag", entry["backlog"])))
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
                    "concurrency": d.concurrency, "policy": self.policy, **_rule_fields(self.rule),
                    **({"lag_count": scaler.lag_count} if isinstance(scaler, LagScaler) else {})})
                self.last[name] = d.desired
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.autoscale(), mapping={name: d.as_json() for name, d in decisions.items()})
        pipe.expire(self.keys.autoscale(), DECISION_TTL_S)
        pipe.execute()
        return decisions


def _rule_fields(rule: Rule | LagRule) -> dict[str, Any]:
    if isinstance(rule, LagRule):
        return {"lag_count": rule.lag_count, "polling_s": rule.polling_s, "window_s": rule.window_s}
    return {"utilisation": rule.utilisation, "drain_s": rule.drain_s, "window_s": rule.window_s}


def rule_from_settings(settings: Any) -> Rule | LagRule:
    """The policy BATCHMESH_AUTOSCALE_POLICY names: `book` (Rule, the default) or `lag` (LagRule, KEDA's)."""
    if getattr(settings, "autoscale_policy", "book") == "lag":
        return LagRule(lag_count=settings.autoscale_lag_count, window_s=settings.autoscale_lag_window_s,
                       rate_window_s=settings.autoscale_rate_window_s)
    return Rule(utilisation=settings.autoscale_utilisation, drain_s=settings.autoscale_drain_s,
                window_s=settings.autoscale_window_s, rate_window_s=settings.autoscale_rate_window_s)


def stored_decisions(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """`bm:{p}:autoscale` as read by HGETALL: stage -> decision."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        try:
            out[k.decode()] = json.loads(v)
        except ValueError:
            continue
    return out
