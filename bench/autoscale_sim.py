"""The autoscaler's rule against the plain lag-threshold policy, in a small discrete-event simulation.

    python -m bench.autoscale_sim [--bursts 3] [--items 600] [--rate 30] [--quiet 300] [--service 1.0]
                                  [--concurrency 2] [--startup 10] [--max 40] [--seed 1]

Arrivals come in bursts: `items` entries at `rate`/s (Poisson), then `quiet` seconds of nothing, `bursts` times.
One work stage: each replica has `concurrency` slots, an item takes `service` s (log-normal, σ = 0.3, mean
`service`), a replica asked for is billed from that moment and serves after `startup` s; a replica told to stop
takes no new item, finishes what it holds, and exits (a replica still starting is cancelled at once). Events:
arrivals, completions, replicas ready, controller ticks.

Policies (both clamped to [min, max] = [0, `max`]):
- **book**: services.manager.autoscale.StageScaler itself (the code the manager runs), ticking every 1 s like the
  manager (TICK_S), fed the totals the manager reads from Redis: arrivals, service time of finished items, items
  timed, and the backlog (waiting + in service). Rule defaults: ρ = 0.8, T = 30 s, W = 30 s, λ window 5 s,
  S over the last 50 items.
- **keda**: what a KEDA `redis-streams` trigger with `lagCount` gives today, with KEDA's and the HPA's defaults:
  KEDA polls every 30 s (`pollingInterval`): lag > `activationLagCount` (0) activates 0 -> 1; no lag for
  `cooldownPeriod` (300 s) scales 1 -> 0. Between 1 and max the HPA decides every 15 s (sync period): desired =
  ceil(lag / lagCount) (an AverageValue target; lag = entries not yet delivered to the group), 10 % tolerance,
  scale-up at most max(+100 %, +4 pods) per sync, scale-down stabilised over 300 s (the highest desired of the
  last 300 s). lagCount 5 (the value KEDA's docs show) and 10.

Figures per policy: the time to drain each burst (its first arrival to its last item done), replica-seconds
(every replica from the moment it is asked for until it exits, over the whole run), scale-downs, and the most
scale-downs within any one stabilisation window of the book's rule (W). The aim (issue 9): the book drains every
burst at least as fast with <= 0.7x the replica-seconds, and never scales down twice within W."""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field

from services.core.spec import WorkSpec
from services.manager.autoscale import Rule, StageScaler


@dataclass(frozen=True)
class Workload:
    bursts: int = 3
    items: int = 600  # per burst
    rate: float = 30.0  # arrivals/s within a burst
    quiet_s: float = 300.0  # after each burst
    service_s: float = 1.0  # mean time of one item
    concurrency: int = 2  # slots per replica
    startup_s: float = 10.0  # asked for -> serving
    min_replicas: int = 0
    max_replicas: int = 40
    seed: int = 1

    @property
    def horizon_s(self) -> float:
        return self.bursts * (self.items / self.rate + self.quiet_s)


@dataclass
class Observed:
    """What a controller may see at a tick (what Redis holds)."""

    now: float
    arrivals: int  # total entries added to the stage's input
    service_us: int  # total service time of finished items
    timed: int  # items finished
    lag: int  # waiting, not yet delivered
    pending: int  # delivered, in service
    replicas: int  # asked for and not told to stop (starting or serving)


class Policy:
    name = ""
    period_s = 1.0
    window_s = 60.0  # the window flapping is judged by

    def decide(self, obs: Observed) -> int:
        raise NotImplementedError


class BookPolicy(Policy):
    """The manager's autoscaler (services.manager.autoscale), on the simulation's clock."""

    def __init__(self, w: Workload, rule: Rule | None = None) -> None:
        self.rule = rule or Rule()
        self.window_s = self.rule.window_s
        self.now = 0.0
        work = WorkSpec.model_validate({"input": "source", "worker": "noop", "concurrency": w.concurrency,
                                        "replicas": {"min": w.min_replicas, "max": w.max_replicas}})
        self.scaler = StageScaler(work, self.rule, clock=lambda: self.now)
        self.name = f"book (ρ={self.rule.utilisation:g}, T={self.rule.drain_s:g}s, W={self.rule.window_s:g}s)"

    def decide(self, obs: Observed) -> int:
        self.now = obs.now
        return self.scaler.decide(arrivals=obs.arrivals, service_us=obs.service_us, timed=obs.timed,
                                  backlog=obs.lag + obs.pending).desired


class KedaPolicy(Policy):
    """KEDA redis-streams `lagCount` trigger + the HPA, with their defaults (see the module's docstring)."""

    period_s = 15.0  # the HPA's sync; KEDA's own poll is every other tick (30 s)

    def __init__(self, w: Workload, lag_count: int = 5, polling_s: float = 30.0, cooldown_s: float = 300.0,
                 stabilisation_s: float = 300.0, tolerance: float = 0.1) -> None:
        self.w, self.lag_count, self.polling_s, self.cooldown_s = w, lag_count, polling_s, cooldown_s
        self.stabilisation_s, self.tolerance = stabilisation_s, tolerance
        self.window_s = stabilisation_s
        self.name = f"keda (lagCount={lag_count}, poll {polling_s:g}s, cooldown {cooldown_s:g}s)"
        self.target, self.last_active = w.min_replicas, -math.inf
        self.recs: deque[tuple[float, int]] = deque()

    def decide(self, obs: Observed) -> int:
        now, lag = obs.now, obs.lag
        if round(now / self.period_s) % round(self.polling_s / self.period_s) == 0:  # KEDA's poll
            if lag > 0:
                self.last_active = now
                if self.target == 0:
                    self.target = 1
            elif self.target > 0 and self.w.min_replicas == 0 and now - self.last_active >= self.cooldown_s:
                self.target = 0
                self.recs.clear()
        if self.target == 0:
            return 0
        current = self.target
        rec = math.ceil(lag / self.lag_count)
        if current and abs(rec / current - 1) <= self.tolerance:
            rec = current
        rec = min(self.w.max_replicas, max(max(self.w.min_replicas, 1), rec))
        self.recs.append((now, rec))
        while self.recs and self.recs[0][0] < now - self.stabilisation_s:
            self.recs.popleft()
        if rec > current:
            self.target = min(rec, max(2 * current, current + 4))
        else:
            self.target = min(current, max(r for _, r in self.recs))
        return self.target


@dataclass
class Replica:
    id: int
    asked: float
    ready_at: float
    ready: bool = False
    stopping: bool = False
    busy: int = 0
    ended: float | None = None


@dataclass
class Result:
    policy: str
    drain_s: list[float]
    replica_s: float
    downs: list[float] = field(default_factory=list)
    peak: int = 0
    trace: list[tuple[float, int, int, int, float]] = field(default_factory=list)  # t, backlog, desired, running, λ

    def downs_per_window(self, window_s: float) -> int:
        """The most scale-downs within any window of `window_s` (a window starting at a scale-down)."""
        return max((sum(1 for t in self.downs if s <= t < s + window_s) for s in self.downs), default=0)


def simulate(w: Workload, policy: Policy) -> Result:
    rng = random.Random(w.seed)
    sigma = 0.3
    mu = math.log(w.service_s) - sigma**2 / 2  # log-normal with mean service_s
    events: list[tuple[float, int, str, int]] = []
    seq = itertools.count()

    def at(t: float, kind: str, arg: int = 0) -> None:
        heapq.heappush(events, (t, next(seq), kind, arg))

    burst_len = w.items / w.rate
    burst_of: list[int] = []  # item -> burst
    burst_start = []
    for b in range(w.bursts):
        t = b * (burst_len + w.quiet_s)
        burst_start.append(t)
        for _ in range(w.items):
            at(t, "arrive", len(burst_of))
            burst_of.append(b)
            t += rng.expovariate(w.rate)
    at(0.0, "tick")
    waiting: deque[int] = deque()
    durations: dict[int, int] = {}  # an item in service -> its service time, µs
    replicas: dict[int, Replica] = {}
    ids = itertools.count()
    arrivals = timed = service_us = in_service = 0
    last_done = [0.0] * w.bursts
    left = [w.items] * w.bursts
    result = Result(policy.name, [], 0.0)
    desired = 0
    lam_window: deque[float] = deque()

    def serve(r: Replica, now: float) -> None:
        nonlocal in_service
        while r.ready and not r.stopping and r.busy < w.concurrency and waiting:
            item = waiting.popleft()
            r.busy += 1
            in_service += 1
            took = rng.lognormvariate(mu, sigma)
            durations[r.id * 10_000_000 + item] = int(took * 1e6)
            at(now + took, "done", r.id * 10_000_000 + item)

    def dispatch(now: float) -> None:
        for r in replicas.values():
            serve(r, now)

    def end(r: Replica, now: float) -> None:
        r.ended = now
        result.replica_s += now - r.asked
        del replicas[r.id]

    def scale(now: float, want: int) -> None:
        live = [r for r in replicas.values() if not r.stopping]
        for _ in range(want - len(live)):
            rid = next(ids)
            replicas[rid] = Replica(rid, now, now + w.startup_s)
            at(now + w.startup_s, "ready", rid)
        if len(live) > want:  # starting ones first, then the idlest
            for r in sorted(live, key=lambda r: (r.ready, r.busy))[:len(live) - want]:
                r.stopping = True
                if r.busy == 0:
                    end(r, now)

    while events:
        now, _, kind, arg = heapq.heappop(events)
        if now > w.horizon_s:
            break
        if kind == "arrive":
            arrivals += 1
            waiting.append(arg)
            lam_window.append(now)
            dispatch(now)
        elif kind == "done":
            rid, item = divmod(arg, 10_000_000)
            r = replicas[rid]
            r.busy -= 1
            in_service -= 1
            timed += 1
            b = burst_of[item]
            left[b] -= 1
            last_done[b] = max(last_done[b], now)
            service_us += durations.pop(arg)  # what a worker adds to the stage stats (service_us, timed)
            if r.stopping and r.busy == 0:
                end(r, now)
            else:
                serve(r, now)
        elif kind == "ready":
            r = replicas.get(arg)
            if r is not None and not r.stopping:
                r.ready = True
                serve(r, now)
        elif kind == "tick":
            obs = Observed(now, arrivals, service_us, timed, len(waiting), in_service,
                           sum(1 for r in replicas.values() if not r.stopping))
            want = policy.decide(obs)
            if want < desired:
                result.downs.append(now)
            desired = want
            scale(now, want)
            dispatch(now)
            result.peak = max(result.peak, len(replicas))
            while lam_window and lam_window[0] < now - 10:
                lam_window.popleft()
            result.trace.append((now, len(waiting) + in_service, want, sum(r.ready for r in replicas.values()),
                                 len(lam_window) / 10))
            at(now + policy.period_s, "tick")
    for r in list(replicas.values()):
        end(r, w.horizon_s)
    result.drain_s = [last_done[b] - burst_start[b] if left[b] == 0 else math.inf for b in range(w.bursts)]
    return result


def compare(w: Workload, policies: list[Policy] | None = None) -> list[Result]:
    policies = policies or [BookPolicy(w), KedaPolicy(w, 5), KedaPolicy(w, 10)]
    return [simulate(w, p) for p in policies]


def table(w: Workload, results: list[Result]) -> str:
    book = results[0]
    window = BookPolicy(w).window_s
    head = ["policy", *(f"drain b{i + 1} s" for i in range(w.bursts)), "replica-s", "× book", "peak",
            "scale-downs", f"max downs / {window:g}s"]
    rows = [head]
    for r in results:
        rows.append([r.policy, *(f"{d:.0f}" for d in r.drain_s), f"{r.replica_s:.0f}",
                     f"{r.replica_s / book.replica_s:.2f}", str(r.peak), str(len(r.downs)),
                     str(r.downs_per_window(window))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * x for x in widths))
    return "\n".join(lines)


def aim_met(results: list[Result], window_s: float) -> list[str]:
    """What of the aim fails (empty: met): against every other policy, the book drains each burst at least as
    fast with <= 0.7x the replica-seconds; and it scales down at most once per window."""
    book, *others = results
    fails = []
    for o in others:
        slower = [i + 1 for i, (a, b) in enumerate(zip(book.drain_s, o.drain_s, strict=True)) if a > b]
        if slower:
            fails.append(f"book drains burst(s) {slower} slower than {o.policy}")
        if book.replica_s > 0.7 * o.replica_s:
            fails.append(f"book spends {book.replica_s / o.replica_s:.2f}x the replica-seconds of {o.policy}")
    if book.downs_per_window(window_s) > 1:
        fails.append(f"book scales down {book.downs_per_window(window_s)} times within {window_s:g}s")
    return fails


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.autoscale_sim", description=__doc__.splitlines()[0])
    d = Workload()
    p.add_argument("--bursts", type=int, default=d.bursts)
    p.add_argument("--items", type=int, default=d.items)
    p.add_argument("--rate", type=float, default=d.rate)
    p.add_argument("--quiet", type=float, default=d.quiet_s)
    p.add_argument("--service", type=float, default=d.service_s)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--startup", type=float, default=d.startup_s)
    p.add_argument("--max", type=int, default=d.max_replicas)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    w = Workload(a.bursts, a.items, a.rate, a.quiet, a.service, a.concurrency, a.startup, 0, a.max, a.seed)
    results = compare(w)
    print(f"{w.bursts} bursts of {w.items} items at {w.rate:g}/s, then {w.quiet_s:g}s quiet; S = {w.service_s:g}s "
          f"(log-normal), c = {w.concurrency}, start-up {w.startup_s:g}s, replicas 0..{w.max_replicas}")
    print(table(w, results))
    fails = aim_met(results, BookPolicy(w).window_s)
    print("aim met: drains every burst at least as fast, <= 0.7x replica-seconds, <= 1 scale-down per window"
          if not fails else "aim NOT met: " + "; ".join(fails))
    return 0 if not fails else 1


if __name__ == "__main__":
    raise SystemExit(main())
