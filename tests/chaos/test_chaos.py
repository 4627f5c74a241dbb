"""The chaos harness, short: 3,000 items through examples/chaos/chaos.yaml under `batchmesh run` on the embedded
Redis while 8 role processes (workers, routers, manager, reducer, joiner, source) are SIGKILLed at random moments
and the supervisor restarts them. The checker (bench/chaos_check.py) reads every stream between stages whole: no
item id twice, none missing, no dead letter, the reduce equal to the truth computed from the input, the join
fired once, for every item, after the last one arrived. The long run: `python -m bench.chaos --items 200000
--kills 20`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run_local, summary


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [3])
def test_chaos_kills_lose_and_double_nothing(tmp_path: Path, seed: int) -> None:
    figures = run_local(3000, 8, seed=seed, workdir=tmp_path, timeout=90, item_ms=5)  # ~2 s of map
    report = summary(figures) + "\n" + "\n".join(figures["log_tail"])
    assert figures["kills"] >= 6, report  # the driver did kill (a role may be between restarts at a moment)
    assert figures["run_exit"] == 0, report
    assert figures["duplicates"] == 0 and figures["lost"] == 0 and figures["dead_letters"] == 0, report
    assert figures["streams"]["fanout.done"]["distinct"] == 3000, report
    assert figures["reduce_exact"], figures["reduce"]
    assert figures["join_once_after_all"], figures["join"]
    assert [b["items"] for b in figures["batches"]] == [3000], figures["batches"]
