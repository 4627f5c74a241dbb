"""The benchmark harness works end to end with tiny sizes (not a timed test: figures only have to be sane)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench.__main__ import main  # noqa: E402
from bench.diff_million import measure_diff  # noqa: E402
from bench.process_overhead import (  # noqa: E402
    measure_posix_spawn,
    measure_process_executor,
    measure_subprocess_run,
)
from bench.report import Row, table  # noqa: E402
from bench.workqueue import measure_stream  # noqa: E402


def _no_keys_left(client: redis.Redis, prefix: str) -> bool:
    return not list(client.scan_iter(match=f"bm:{{{prefix}-*", count=1000))


def test_stream_workqueue_runs_every_item(redis_url: str, client: redis.Redis) -> None:
    out = measure_stream(redis_url, 50)
    assert out["n"] == 50 and out["items_per_s"] > 0 and out["seconds"] > 0
    assert _no_keys_left(client, "bwq")


def test_process_executor_and_baselines(redis_url: str, client: redis.Redis) -> None:
    for out in (measure_process_executor(redis_url, 5), measure_subprocess_run(5), measure_posix_spawn(5)):
        assert out["n"] == 5 and 0 < out["per_item_s"] < 5
    assert _no_keys_left(client, "bproc")


def test_diff_runs_in_a_subprocess(redis_url: str, client: redis.Redis) -> None:
    out = measure_diff(redis_url, 2500, passes=1)  # checks itself: all dispatched once, none the second time
    assert out["stream_len"] == 2500 and out["steady_dispatched"] == 0
    assert out["first_pass_s"] > 0 and out["steady_pass_s"] > 0 and 10 < out["peak_rss_mb"] < 1000
    assert _no_keys_left(client, "bdiff")


def test_report_ratios_and_targets() -> None:
    faster = Row("x", 1000.0, "items/s", 10.0, "peer", "ratio>=", 50)
    slower = Row("y", 3.0, "ms", 1.0, "bare", "ratio<=", 1.5)
    small = Row("z", 4.0, "s", goal="value<=", target=5.0)
    short = Row("w", 8.0, "items/s", goal="value>=", target=30.0)
    assert (faster.ratio, faster.met, slower.met, small.met, short.met) == (100.0, True, False, True, False)
    text = table([faster, slower, small, Row("info", 1.0, "MB")])
    assert "met?" in text.splitlines()[0] and "NO" in text and "(info)" in text


def test_main_quick_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench --quick`: every part, peers included, one table and the JSON file."""
    pytest.importorskip("rq")
    pytest.importorskip("celery")
    out = tmp_path / "bench.json"
    assert main(["--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["benchmark"][:3] for r in doc["rows"]] == [*["(a)"] * 3, "(b)", "(b)", *["(c)"] * 3, *["(d)"] * 5,
                                                         "(e)", *["(r)"] * 8]
    assert all(r["baseline"] > 0 and r["ratio"] > 0 for r in doc["rows"][:5])
    assert all(r["met"] is not None for r in doc["rows"] if r["goal"] != "info")
    assert all(r["ours"] > 0 for r in doc["rows"])
    assert "benchmark" in capsys.readouterr().out
