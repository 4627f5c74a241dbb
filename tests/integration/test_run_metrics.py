"""`batchmesh run` with metrics: every role its own port (an inherited BATCHMESH_METRICS_PORT is not reused), listed
in a Prometheus file_sd targets file; each role answers /metrics and /healthz; the manager exports the cluster
gauges from Redis."""

from __future__ import annotations

from pathlib import Path

import redis
from live_run import (
    KillableRedis,
    by_role_name,
    healthz,
    sample,
    scrape,
    start_run,
    stop_run,
    targets,
    wait_for,
)

from services.core import Keys

SPEC = """
apiVersion: batchmesh/v1
kind: Pipeline
name: metered
source: {type: directory, path: ./in, glob: "*.txt"}
stages:
  merged: {merge: {inputs: [source]}}
  work:   {work: {input: merged, worker: echo, replicas: {min: 1, max: 1}}}  # no scaling mid-test
  total:  {reduce: {input: work, fold: {files: {count: true}}}}
"""
N = 12


def test_every_role_serves_its_own_metrics_and_the_manager_the_cluster_view(tmp_path: Path) -> None:
    server = KillableRedis(tmp_path / "redis", persist=False)
    url = server.start()
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(SPEC)
    source = tmp_path / "in"
    source.mkdir()
    for i in range(N):
        (source / f"f{i:02d}.txt").write_text(str(i))
    client = redis.Redis.from_url(url)
    keys = Keys("metered")
    run = start_run(tmp_path, spec, source, url, env={"BATCHMESH_METRICS_PORT": "9400"})  # would collide
    try:
        wait_for("the batch done", lambda: int(client.hget(keys.counts(), "done") or 0) == N)
        entries = targets(tmp_path, "metered")
        live = by_role_name(entries)
        assert {"source", "manager", "router-merged", "router-total", "worker-work-0"} <= set(live)
        assert len(set(live.values())) == len(live)  # a port each
        assert "127.0.0.1:9400" not in live.values()
        labels = {e["labels"]["role_name"]: (e["labels"]["role"], e["labels"]["stage"]) for e in entries}
        assert labels["router-total"] == ("barrier", "total") and labels["worker-work-0"] == ("worker", "work")
        assert labels["manager"] == ("manager", "")

        for name, target in live.items():
            assert healthz(target) == 200, name
            role, stage = labels[name]
            samples = scrape(target)
            assert sample(samples, "batchmesh_role_up", pipeline="metered", role=role, stage=stage) == 1, name
            if role != "source":
                assert sample(samples, "batchmesh_redis_up", role=role) == 1, name
        worker = scrape(live["worker-work-0"])
        assert sample(worker, "batchmesh_items_out_total", stage="work") == N
        assert sample(worker, "batchmesh_processing_seconds_count", stage="work") == N

        def cluster() -> dict | None:  # the manager's tick runs every second: wait for one after the batch
            s = scrape(live["manager"])
            return s if sample(s, "batchmesh_batch_complete", pipeline="metered") == 1 else None

        m = wait_for("the manager's gauges of the finished batch", cluster, timeout_s=30)
        assert sample(m, "batchmesh_stage_arrivals_total", stage="merged") == N
        assert sample(m, "batchmesh_stage_arrivals_total", stage="work") == N
        assert sample(m, "batchmesh_stage_arrivals_total", stage="total") == N
        assert sample(m, "batchmesh_batch_items", state="done") == N
        assert sample(m, "batchmesh_batch_items", state="listed") == N
        assert sample(m, "batchmesh_batches_total", pipeline="metered") == 1
        for stage in ("merged", "work", "total"):
            assert sample(m, "batchmesh_stage_lag_items", stage=stage) == 0
            assert sample(m, "batchmesh_stage_pending_items", stage=stage) == 0
            assert sample(m, "batchmesh_backlog_items", stage=stage) == 0
        assert sample(m, "batchmesh_stage_consumers", stage="work") >= 1
        assert sample(m, "batchmesh_stage_consumers", stage="total") == 1
        assert sample(m, "batchmesh_stage_replicas_desired", stage="work") == 1
        assert sample(m, "batchmesh_redis_memory_used_bytes", pipeline="metered") > 100_000
        assert sample(m, "batchmesh_redis_memory_peak_bytes", pipeline="metered") >= sample(
            m, "batchmesh_redis_memory_used_bytes", pipeline="metered")
    finally:
        stop_run(run)
        server.stop()
    assert targets(tmp_path, "metered") == []  # every role stopped: nothing left to scrape
