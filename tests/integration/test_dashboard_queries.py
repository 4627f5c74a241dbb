"""Every query of every Grafana panel returns data from a real Prometheus scraping a real `batchmesh run --watch`
of the word count (services.render.grafana.panel_queries; a panel naming a metric or label no role exports fails),
and the alert rules load and evaluate there. Prometheus is Debian's binary (tests/promql.py), scraping the targets
file the run writes (`<BATCHMESH_DATA_DIR>/run/<pipeline>/targets.json`, file_sd) with one job per role."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promql import local_prometheus, poll, queries_without_data, rules_health, wait_for_data, wait_for_targets

from services.core.spec import load_pipeline
from services.render.alerts import alert_names
from services.render.grafana import dashboards, panel_queries

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "wordcount"
SCRAPE_S = 1
# map-0: a work stage (replicas, processing times). A rate window of 1 m spans the whole run, so quantiles have
# data even once the batch is through (NaN only fails the check); Grafana's own would be >= 4 scrape intervals.
VARIABLES = {"pipeline": "wordcount", "stage": "map-0", "__interval": "2s", "__rate_interval": "1m", "__range": "1m"}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        reason = "prometheus not on PATH (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _config(targets_file: Path | None) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = []
    if targets_file is not None:
        jobs = [{"job_name": "batchmesh", "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
                 # jobs named by role, as in the compose deployment (the dashboards and alerts select on them)
                 "relabel_configs": [{"source_labels": ["role"], "target_label": "job"}],
                 "honor_labels": True}]  # the metrics' own pipeline/stage/role win over the targets' labels
    return {"global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(ROOT / "compose" / "prometheus" / "alerts.yml")], "scrape_configs": jobs}


def generate(target: Path, seed: int, files: int = 20) -> None:
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(target), "--files", str(files), "--seed",
                    str(seed)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def wordcount_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """`batchmesh run examples/wordcount/pipeline.yaml --watch` on 20 generated files; yields its targets file and
    its input directory (files added there are the next batch)."""
    tmp = tmp_path_factory.mktemp("wordcount")
    generate(tmp / "texts" / "first", seed=3)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "st"), "WORDCOUNT_DELAY_MS": "100"}
    env.pop("REDIS_URL", None)  # its own embedded Redis
    run = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(EXAMPLE / "pipeline.yaml"),
                            "--input", str(tmp / "texts"), "--out", str(tmp / "out"), "--quiet", "--watch"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "run.err").open("w"))
    targets = tmp / "st" / "run" / "wordcount" / "targets.json"
    try:
        if not poll(lambda: targets.exists() and targets.stat().st_size > 0 or run.poll() is not None, timeout=30):
            pytest.fail(f"`batchmesh run` wrote no {targets} within 30 s (file_sd targets, one port per role)")
        if run.poll() is not None:
            pytest.fail(f"`batchmesh run --watch` exited {run.returncode}: {(tmp / 'run.err').read_text()[-3000:]}")
        yield targets, tmp / "texts"
    finally:
        run.send_signal(signal.SIGTERM)  # stops every role it started
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def test_every_panel_query_returns_data(prometheus_binary: str, wordcount_run: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    targets, texts = wordcount_run
    boards = dashboards([load_pipeline(EXAMPLE / "pipeline.yaml")])
    queries = [(f"{name}: {title}", expr) for name, board in boards.items()
               for title, expr in panel_queries(board, VARIABLES)]
    assert len(queries) > 30
    with local_prometheus(tmp_path / "prometheus", _config(targets), prometheus_binary) as url:
        found = wait_for_targets(url, {"source", "manager", "router", "barrier", "worker"}, timeout=30)
        assert {t["labels"].get("stage") for t in found} >= {"map-0", "map-1"}
        generate(texts / "second", seed=4)  # a second batch while Prometheus watches: rates and quantiles move
        assert wait_for_data(url, queries, timeout=30) == []
        health = poll(lambda: (h := rules_health(url)) and "unknown" not in h.values() and h, timeout=15)
        assert health == {name: "ok" for name in alert_names()}


def test_the_check_fails_on_a_metric_nobody_exports(prometheus_binary: str, tmp_path: Path) -> None:
    """The check itself: no data for a metric nobody exports, an error for bad PromQL, data for a series."""
    with local_prometheus(tmp_path / "prometheus", _config(None), prometheus_binary) as url:
        failures = queries_without_data(url, [
            ("missing", 'sum(rate(batchmesh_no_such_metric_total{pipeline="wordcount"}[5s]))'),
            ("bad", "sum(rate(batchmesh_items_out_total[5s])"),
            ("nan", "vector(0) / vector(0)"),
            ("series", "vector(1)"),
        ])
        assert [f.split(":")[0] for f in failures] == ["missing", "bad", "nan"]
        assert "no data" in failures[0] and "bad_data" in failures[1] and "only NaN" in failures[2]
        assert queries_without_data(url, [("nan", "vector(0) / vector(0)")], allow_nan=True) == []
