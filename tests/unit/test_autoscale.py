"""The autoscaler's rule (services.manager.autoscale): the book's stability condition plus a drain term, clamped
and stabilised. Pure logic with a fake clock; properties with hypothesis."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.manager.autoscale import Rule, Stabiliser, StageMeter, StageScaler, fallback, recommend

RULE = Rule(utilisation=0.8, drain_s=30, window_s=60, rate_window_s=10)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rec(lam: float, s: float | None, b: int, c: int = 1, lo: int = 0, hi: int = 100, rule: Rule = RULE) -> int:
    return recommend(rule, arrival_rate=lam, service_s=s, backlog=b, concurrency=c, min_replicas=lo,
                     max_replicas=hi)


def test_the_books_rule_smallest_r_with_processing_over_parallelism_below_the_interarrival_time() -> None:
    # λ = 10/s, S = 0.5 s, c = 2: S/(r c) < 0.8/λ  <=>  r > λ S / (c ρ) = 3.125  ->  4
    assert rec(10, 0.5, 0, c=2) == 4
    r = rec(10, 0.5, 0, c=2)
    assert 0.5 / (r * 2) < 0.8 / 10 and not 0.5 / ((r - 1) * 2) < 0.8 / 10
    # exactly on the boundary is not stable: λ S / (c ρ) = 2 -> 3
    assert rec(3.2, 0.5, 0, c=1) == 3


def test_the_drain_term_adds_enough_to_empty_the_backlog_within_t() -> None:
    assert rec(0, 0.5, 120, c=2) == math.ceil(120 * 0.5 / (2 * 30))  # 1
    assert rec(0, 0.5, 1000, c=2) == 9
    assert rec(10, 0.5, 1000, c=2) == 4 + 9


def test_clamped_and_idle_and_unmeasured() -> None:
    assert rec(1000, 1.0, 10_000, lo=1, hi=4) == 4
    assert rec(0, 1.0, 0, lo=2, hi=4) == 2
    assert rec(0, 1.0, 0, lo=0) == 0
    assert rec(0, None, 0, lo=0) == 0  # idle and never measured
    assert rec(0, None, 500, lo=0) == 1  # work, S unknown: one replica measures it
    assert rec(5, None, 0, lo=0) == 1


def test_invalid_rules_are_refused() -> None:
    for bad in ({"utilisation": 0}, {"utilisation": 1.5}, {"drain_s": 0}, {"window_s": -1}):
        with pytest.raises(ValueError):
            Rule(**bad)


def test_fallback_without_a_decision() -> None:
    from services.core.spec import WorkSpec

    work = WorkSpec.model_validate({"input": "source", "worker": "noop", "replicas": {"min": 0, "max": 4}})
    assert fallback(work, 0) == 0 and fallback(work, 50) == 1


def test_stabiliser_scales_up_at_once_and_down_once_per_window_to_the_windows_max() -> None:
    clock = Clock()
    s = Stabiliser(60, clock)
    assert s.decide(2) == 2
    clock.t += 1
    assert s.decide(8) == 8  # up: at once
    for _ in range(30):
        clock.t += 1
        assert s.decide(1) == 8  # the 8 is still in the window
    clock.t += 31
    assert s.decide(3) == 3  # the window's max (1s and the 3) now
    clock.t += 1
    assert s.decide(1) == 3  # one scale-down per window
    clock.t += 60
    assert s.decide(1) == 1


def test_meter_rates_from_totals_and_a_reset() -> None:
    clock = Clock()
    m = StageMeter(10, clock)
    assert m.update(0, 0, 0) == (0.0, None)
    clock.t += 2
    lam, s = m.update(20, 1_000_000, 4)
    assert lam == pytest.approx(10) and s == pytest.approx(0.25)
    clock.t += 20
    lam, s = m.update(20, 1_000_000, 4)
    assert lam == pytest.approx(0) and s == pytest.approx(0.25)  # quiet: λ falls, S is kept
    clock.t += 1
    assert m.update(3, 0, 0)[0] == 0  # totals went back (Redis restored): the averages start afresh
    assert StageMeter(10, clock).update(100, 2_000_000, 4) == (0.0, 0.5)  # restarted manager: lifetime mean


lams = st.floats(0, 500, allow_nan=False)
services = st.one_of(st.none(), st.floats(0.0001, 30, allow_nan=False))
backlogs = st.integers(0, 100_000)
concurrencies = st.integers(1, 16)
bounds = st.tuples(st.integers(0, 10), st.integers(1, 50)).filter(lambda b: b[0] <= b[1])


@given(lams, services, backlogs, concurrencies, bounds)
def test_never_outside_min_max(lam: float, s: float | None, b: int, c: int, lohi: tuple[int, int]) -> None:
    assert lohi[0] <= rec(lam, s, b, c, *lohi) <= lohi[1]


@given(lams, lams, services, backlogs, backlogs, concurrencies, bounds)
def test_monotone_in_arrival_rate_and_backlog(l1: float, l2: float, s: float | None, b1: int, b2: int, c: int,
                                              lohi: tuple[int, int]) -> None:
    (la, lb), (ba, bb) = sorted((l1, l2)), sorted((b1, b2))
    assert rec(la, s, ba, c, *lohi) <= rec(lb, s, ba, c, *lohi)
    assert rec(la, s, ba, c, *lohi) <= rec(la, s, bb, c, *lohi)


@given(lams.filter(lambda x: x > 0), st.floats(0.001, 30), concurrencies)
def test_stable_by_the_book(lam: float, s: float, c: int) -> None:
    r = rec(lam, s, 0, c, 0, 10**9)
    assert s / (r * c) < RULE.utilisation / lam


steps = st.lists(st.tuples(st.floats(0, 120, allow_nan=False), st.integers(0, 40)), min_size=1, max_size=80)


@settings(max_examples=300)
@given(steps, st.floats(0, 120, allow_nan=False))
def test_at_most_one_scale_down_per_window_under_any_input_sequence(seq: list[tuple[float, int]],
                                                                    window: float) -> None:
    clock = Clock()
    s = Stabiliser(window, clock)
    last, downs = None, []
    for dt, r in seq:
        clock.t += dt
        d = s.decide(r)
        if last is not None and d < last:
            downs.append(clock.t)
        if last is not None and r >= last:
            assert d == r  # up (or equal): at once
        last = d
    assert all(b - a >= window for a, b in zip(downs, downs[1:], strict=False))


@given(steps, concurrencies)
def test_zero_when_idle_and_min_zero(seq: list[tuple[float, int]], c: int) -> None:
    from services.core.spec import WorkSpec

    clock = Clock()
    work = WorkSpec.model_validate({"input": "source", "worker": "noop", "concurrency": c,
                                    "replicas": {"min": 0, "max": 40}})
    scaler = StageScaler(work, RULE, clock)
    arrivals = timed = 0
    for dt, n in seq:  # any history of arrivals and finished items...
        clock.t += dt
        arrivals, timed = arrivals + n, timed + n
        scaler.decide(arrivals=arrivals, service_us=timed * 10_000, timed=timed, backlog=n)
    # ...then idle: the recommendation is 0 once λ's window has passed, and the decision follows within two
    # windows (one scale-down to the window's max, the next a window later)
    for _ in range(int((2 * RULE.window_s + RULE.rate_window_s) / 5) + 2):
        clock.t += 5
        d = scaler.decide(arrivals=arrivals, service_us=timed * 10_000, timed=timed, backlog=0)
    assert d.desired == 0 and d.arrival_rate == 0
