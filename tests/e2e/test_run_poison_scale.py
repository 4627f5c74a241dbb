"""Poison and slow items at scale (issue 11, part 3), small: 400 items through source -> work (process executor)
-> reduce, where 1% make the worker exit non-zero, 0.5% hang past the timeout and 0.5% SIGKILL the worker process
itself. Each ends in the dead-letter stream after max_deliveries (3) with its reason, every other item is folded
exactly once, and after the fix `batchmesh dlq replay` + a second run complete them: the batch's aggregate is
exact over all 400. The same scenario, larger, with figures: `python -m bench.poison --items 5000`."""

from __future__ import annotations

from pathlib import Path

from bench.poison import run


def test_poison_hanging_and_self_killing_items_are_dead_lettered_then_replayed_exactly(
        embedded_redis_url: str, tmp_path: Path) -> None:
    figures = run(embedded_redis_url, tmp_path, items=400, executor="process")
    assert (figures.crashes, figures.hangs, figures.kills) == (4, 2, 2)
    assert figures.dead_letters == 8 and figures.dead_with_reason == 8, figures
    assert figures.aggregate_exact_run1, "the good items were folded exactly once, none of the poison ones"
    assert figures.duplicates == 0 and figures.lost == 0, figures
    assert figures.aggregate_exact_after_replay, "after dlq replay the aggregate covers all 400 items exactly"
