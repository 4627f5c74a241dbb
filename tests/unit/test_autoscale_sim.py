"""bench.autoscale_sim, run small: the book's rule (the manager's own StageScaler) against KEDA's lagCount policy
on the same bursty arrivals meets the aim of issue 9."""

from __future__ import annotations

import pytest

from bench.autoscale_sim import BookPolicy, KedaPolicy, Workload, aim_met, compare, main, simulate


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_book_drains_as_fast_with_at_most_0_7x_the_replica_seconds_and_no_flapping(seed: int) -> None:
    w = Workload(bursts=2, items=300, quiet_s=400, seed=seed)  # gaps longer than KEDA's cooldown
    results = compare(w)
    assert aim_met(results, BookPolicy(w).window_s) == []
    book, *keda = results
    assert all(r.drain_s[i] < float("inf") for r in results for i in range(w.bursts))  # every burst drained
    assert book.downs and book.downs_per_window(BookPolicy(w).window_s) == 1
    assert all(book.replica_s <= 0.7 * k.replica_s for k in keda)


def test_both_policies_scale_to_zero_between_bursts_and_the_cli_prints_the_table(
        capsys: pytest.CaptureFixture[str]) -> None:
    w = Workload(bursts=1, items=200, quiet_s=700)
    for policy in (BookPolicy(w), KedaPolicy(w, 5)):
        r = simulate(w, policy)
        assert r.trace[-1][2] == 0 and r.peak > 1  # desired 0 at the end, scaled up on the burst
    assert main(["--bursts", "2", "--items", "300", "--quiet", "400"]) == 0
    out = capsys.readouterr().out
    assert "book (ρ=0.8, T=30s, W=30s)" in out and "keda (lagCount=5" in out and "aim met" in out
