"""The autoscaler live under `batchmesh run` (bench/autoscale_live.py, small): a burst raises the running worker
processes, a drained queue lowers them again, never below one; the plot is written. The stabilisation window is
shortened (BATCHMESH_AUTOSCALE_WINDOW_S, passed on to the manager) so the scale-down shows within the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.autoscale_live import live


def test_a_burst_scales_the_workers_up_and_a_drained_queue_down(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHMESH_AUTOSCALE_WINDOW_S", "8")
    png, csv = tmp_path / "autoscaling.png", tmp_path / "series.csv"
    result = live(["--bursts", "80", "--burst-s", "3", "--quiet", "30", "--item-s", "0.4", "--max", "4",
                   "--png", str(png), "--csv", str(csv)])
    rows = result["rows"]
    assert result["drain_s"][0] is not None  # the burst was processed
    assert result["peak_desired"] == 4 and result["peak_running"] >= 3  # scaled up on the burst
    assert result["scale_downs"] >= 1 and rows[-1]["desired"] == 1 and rows[-1]["running"] == 1  # and down again
    assert min(r["running"] for r in rows) >= 1  # the local runner keeps one
    assert max(r["arrival_rate"] for r in rows) > 5 and max(r["backlog"] for r in rows) > 10
    assert png.stat().st_size > 10_000 and csv.read_text().startswith("t,arrival_rate,")
