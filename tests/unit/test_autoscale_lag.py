"""The lag policy (services.manager.autoscale.LagRule / LagScaler): KEDA's replicas = ceil(lag / lagCount) with the
HPA behaviour we render (poll, tolerance, scale-up/-down rate limits, downscale stabilisation, cooldown to min).
Pure logic with a fake clock; properties with hypothesis. Its defaults must equal what services/render renders."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.core import Settings
from services.core.spec import WorkSpec
from services.manager.autoscale import LagRule, LagScaler, Rule, rule_from_settings
from services.render import k8s_scalers


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def work(lo: int = 1, hi: int = 20, c: int = 2) -> WorkSpec:
    return WorkSpec.model_validate({"input": "source", "worker": "noop", "concurrency": c,
                                    "replicas": {"min": lo, "max": hi}})


def step(s: LagScaler, clock: Clock, lag: int, dt: float = 1.0) -> int:
    clock.t += dt
    return s.decide(arrivals=0, service_us=0, timed=0, backlog=lag, lag=lag).desired


def test_replicas_are_lag_over_lag_count_rate_limited_up_and_stabilised_down() -> None:
    clock = Clock()
    s = LagScaler(work(), LagRule(), clock)  # lagCount = 2 × 4 = 8, as rendered
    assert step(s, clock, 0) == 1  # min
    assert step(s, clock, 160, dt=10) == 5  # wants 20: +4 pods per 15 s
    assert step(s, clock, 160, dt=1) == 5  # between polls nothing changes
    assert step(s, clock, 160, dt=9) == 5  # a poll, but 4 were added within the last 15 s
    assert step(s, clock, 160, dt=10) == 9  # 20 s after the first: 4 more
    for _ in range(2):
        step(s, clock, 160, dt=15)
    assert s.current == 17
    assert step(s, clock, 1000, dt=15) == 20  # clamped to max
    last_high = clock.t
    changes = []
    for _ in range(40):  # lower wishes: stabilised over 120 s, then one pod per 60 s
        before = s.current
        if step(s, clock, 8, dt=10) != before:
            changes.append((clock.t - last_high, before - s.current))
    assert changes[0][0] == 130 and all(d == 1 for _, d in changes)  # the last 20 left the window (> 120 s)
    assert [b[0] - a[0] for a, b in zip(changes, changes[1:], strict=False)] == [60] * (len(changes) - 1)


def test_tolerance_and_cooldown_to_zero() -> None:
    clock = Clock()
    s = LagScaler(work(lo=0, hi=10, c=1), LagRule(lag_count=10, window_s=0, down_pods=10), clock)
    assert step(s, clock, 0) == 0
    assert step(s, clock, 1, dt=10) == 1  # activation: any lag wakes it (floor 1 while active)
    assert step(s, clock, 50, dt=10) == 4  # +4 pods per 15 s, the 0 -> 1 included
    assert step(s, clock, 50, dt=10) == 5
    assert step(s, clock, 53, dt=10) == 5  # 5.3 wanted: within the HPA's 10 % tolerance, kept
    assert step(s, clock, 60, dt=10) == 6
    assert step(s, clock, 0, dt=10) == 1  # idle but inside the cooldown: the floor of 1
    clock.t += 300
    assert step(s, clock, 0, dt=10) == 0  # 300 s without lag: back to min 0


def test_defaults_are_what_is_rendered_for_keda() -> None:
    rule = LagRule()
    behaviour = k8s_scalers._behavior()
    assert rule.polling_s == k8s_scalers.POLLING_S and rule.cooldown_s == k8s_scalers.COOLDOWN_S
    assert rule.window_s == behaviour["scaleDown"]["stabilizationWindowSeconds"]
    assert (rule.down_pods, rule.down_period_s) == tuple(behaviour["scaleDown"]["policies"][0][k]
                                                         for k in ("value", "periodSeconds"))
    assert (rule.up_pods, rule.up_period_s) == tuple(behaviour["scaleUp"]["policies"][0][k]
                                                     for k in ("value", "periodSeconds"))
    w = work(c=3)
    assert LagScaler(w, rule).lag_count == k8s_scalers.lag_count(w)


def test_selected_by_setting() -> None:
    assert isinstance(rule_from_settings(Settings()), Rule)
    lag = rule_from_settings(Settings(autoscale_policy="lag", autoscale_lag_count=7, autoscale_lag_window_s=30))
    assert isinstance(lag, LagRule) and lag.lag_count == 7 and lag.window_s == 30
    with pytest.raises(ValueError):
        Settings(autoscale_policy="hpa")
    with pytest.raises(ValueError):
        LagRule(tolerance=1.5)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 40), st.integers(0, 400)), min_size=1, max_size=60),
       st.integers(0, 3), st.integers(1, 12))
def test_bounded_and_rate_limited_both_ways(seq: list[tuple[float, int]], lo: int, span: int) -> None:
    hi = lo + span
    clock = Clock()
    rule = LagRule(lag_count=5)
    s = LagScaler(work(lo=lo, hi=hi, c=1), rule, clock)
    changes: list[tuple[float, int]] = []
    for dt, lag in seq:
        before = s.current
        d = step(s, clock, lag, dt)
        assert lo <= d <= hi
        assert d >= min(before, math.ceil(lag / 5)) or d == hi  # never below what the lag asks, unless it was
        if d != before:
            changes.append((clock.t, d - before))
    for t, _ in changes:  # within any period: at most up_pods added, down_pods removed
        assert sum(x for u, x in changes if x > 0 and t - rule.up_period_s < u <= t) <= rule.up_pods
        assert sum(-x for u, x in changes if x < 0 and t - rule.down_period_s < u <= t) <= rule.down_pods
