"""The chaos harness in containers, short (bench/chaos_compose.py): examples/chaos/chaos.yaml rendered by
`batchmesh render compose`, up with `docker compose -p <unique>` on redis:7, while 5 role containers are
`docker kill`ed at random moments of the batch and the harness `docker start`s each again (Docker takes `docker
kill` for a manual stop, which `restart: unless-stopped` leaves stopped). The same checker as the local run:
nothing doubled on any stream between stages, nothing lost, no dead letter, the reduce exact, the join fired once
after every item. The long run: `python -m bench.chaos_compose --items 20000 --kills 20`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos import summary
from bench.chaos_compose import run_compose


@pytest.mark.timeout(240)
def test_chaos_in_containers_loses_and_doubles_nothing(docker_client: Any, mesh_image: str, tmp_path: Path) -> None:
    figures = run_compose(1000, 5, seed=2, workdir=tmp_path, timeout=150, build=False,  # mesh_image: built
                          item_ms=20)  # ~2.5 s of map: the kills land while it runs
    report = summary(figures)
    assert figures["kills"] >= 4, report
    assert figures["run_exit"] == 0, report
    assert figures["duplicates"] == 0 and figures["lost"] == 0 and figures["dead_letters"] == 0, report
    assert figures["streams"]["fanout.done"]["distinct"] == 1000, report
    assert figures["reduce_exact"], figures["reduce"]
    assert figures["join_once_after_all"], figures["join"]
    assert [b["items"] for b in figures["batches"]] == [1000], figures["batches"]
