"""The autoscaler live, under `batchmesh run` (local processes): bursts of files through one work stage with a real
per-item cost; records arrival rate, backlog, desired and running replicas over time and plots them.

    python -m bench.autoscale_live [--bursts 300,500] [--burst-s 8] [--quiet 75] [--item-s 0.5] [--max 8]
                                   [--policy book|lag] [--lag-window 120]
                                   [--png docs/autoscaling.png] [--csv out/autoscale_live.csv]

A fresh directory holds the spec, the source directory and the embedded Redis. `batchmesh run --watch` runs the
pipeline (source polled every second; one stream work stage: a subprocess per item, `--item-s` of wall time,
concurrency 2, replicas 1..`--max`). Each burst writes its files into the source directory over `--burst-s`
seconds, then nothing happens for `--quiet` seconds. Every 0.5 s this script reads, from Redis, what the
actuators read: `status()` (backlog; `desired_replicas` and the inputs λ and S of the manager's autoscaler) and the
stage's live consumers (heartbeats of the last 2.5 s: the replicas serving). At the end: the time to drain each
burst (first file written -> backlog 0 with every item done), replica-seconds, scale-ups and scale-downs; the
series go to the CSV and the plot (matplotlib) to the PNG. `--policy lag` runs the manager with
BATCHMESH_AUTOSCALE_POLICY=lag (services.manager.autoscale.LagRule: KEDA's ceil(lag / lagCount) with the behaviour
we render) instead of the book's rule; bench/autoscale_compare.py runs both and compares them."""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from services.core import Keys, redis_url
from services.core.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
STAGE = "work"
SPEC = """\
apiVersion: batchmesh/v1
kind: Pipeline
name: autoscale-live
source: {{type: directory, path: ./data, glob: "*.txt", poll: 1s}}
stages:
  work:
    work:
      input: source
      command: [{python}, {item}]
      executor: stream
      replicas: {{min: 1, max: {max}}}
      concurrency: 2
      timeout: 60s
      env: {{ITEM_SECONDS: "{item_s}"}}
"""


def sample(client: redis.Redis, pipeline: Any, started: float) -> dict[str, Any]:
    from services.manager import status

    snap = status(client, pipeline)
    stage = snap["stages"][STAGE]
    inputs = stage.get("autoscale") or {}
    live = client.zcount(Keys(pipeline.name).alive(STAGE), time.time() - 2.5, "+inf")
    return {"t": round(time.monotonic() - started, 2), "arrival_rate": inputs.get("arrival_rate") or 0.0,
            "service_s": inputs.get("service_s"), "backlog": stage["backlog"], "lag": stage.get("lag", 0),
            "desired": stage["desired_replicas"],
            "running": int(live), "done": snap["counts"]["done"]}


def feed(inbox: Path, sizes: list[int], burst_s: float, quiet_s: float, started: float) -> list[tuple[float, float]]:
    """Write each burst of `sizes[i]` files into `inbox`, spread over `burst_s` seconds, then wait `quiet_s`;
    returns each burst's (start, end) in seconds since `started` (time.monotonic)."""
    bursts, n = [], 0
    for size in sizes:
        began = time.monotonic() - started
        for _ in range(size):
            (inbox / f"f{n:05d}.txt").write_text(f"item {n}\n")
            n += 1
            time.sleep(burst_s / size)
        bursts.append((began, time.monotonic() - started))
        time.sleep(quiet_s)
    return bursts


def plot(rows: list[dict[str, Any]], bursts: list[tuple[float, float]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5), height_ratios=[1, 1])
    top.plot(t, [r["arrival_rate"] for r in rows], color="tab:blue", label="arrival rate λ (items/s)")
    top.set_ylabel("items/s", color="tab:blue")
    right = top.twinx()
    right.plot(t, [r["backlog"] for r in rows], color="tab:orange", label="backlog (lag + pending)")
    right.set_ylabel("items", color="tab:orange")
    lines = top.get_lines() + right.get_lines()
    top.legend(lines, [line.get_label() for line in lines], loc="upper center")
    bottom.step(t, [r["desired"] for r in rows], where="post", color="tab:red", label="desired (autoscaler)")
    bottom.step(t, [r["running"] for r in rows], where="post", color="tab:green", linestyle="--",
                label="running worker replicas")
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper center")
    for ax in (top, bottom):
        for a, b in bursts:
            ax.axvspan(a, b, color="grey", alpha=0.15)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def downs_per_window(downs: list[float], window_s: float) -> int:
    """The most scale-downs within any `window_s` (a window starting at a scale-down): 1 at most = no flapping."""
    return max((sum(1 for t in downs if s <= t < s + window_s) for s in downs), default=0)


def summarise(rows: list[dict[str, Any]], bursts: list[tuple[float, float]], sizes: list[int],
              window_s: float = 30.0) -> dict[str, Any]:
    drains, total = [], 0
    for (a, _), n in zip(bursts, sizes, strict=True):
        total += n
        end = next((r["t"] for r in rows if r["t"] >= a and r["done"] >= total and r["backlog"] == 0), None)
        drains.append(None if end is None else round(end - a, 1))
    replica_s = sum(r0["running"] * (r1["t"] - r0["t"]) for r0, r1 in zip(rows, rows[1:], strict=False))
    ups = sum(1 for r0, r1 in zip(rows, rows[1:], strict=False) if r1["desired"] > r0["desired"])
    downs = [r1["t"] for r0, r1 in zip(rows, rows[1:], strict=False) if r1["desired"] < r0["desired"]]
    return {"downs_per_window": downs_per_window(downs, window_s), "window_s": window_s,
            "drain_s": drains, "replica_s": round(replica_s), "scale_ups": ups, "scale_downs": len(downs),
            "scale_down_times": downs, "peak_desired": max(r["desired"] for r in rows),
            "peak_running": max(r["running"] for r in rows)}


def report(rows: list[dict[str, Any]], bursts: list[tuple[float, float]], sizes: list[int], out: Path, png: Path,
           title: str, window_s: float = 30.0) -> dict[str, Any]:
    """Write the series as CSV, plot them, print the summary line; returns the summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = summarise(rows, bursts, sizes, window_s)
    plot(rows, bursts, png, title)
    print(f"bursts {sizes}: drain {result['drain_s']} s; replica-seconds {result['replica_s']}; peak desired "
          f"{result['peak_desired']}, running {result['peak_running']}; scale-ups {result['scale_ups']}, "
          f"scale-downs {result['scale_downs']} at {result['scale_down_times']} (at most "
          f"{result['downs_per_window']} within {window_s:g}s)")
    print(f"series: {out}; plot: {png}")
    return result


def main(argv: list[str] | None = None) -> int:
    live(argv)
    return 0


def live(argv: list[str] | None = None) -> dict[str, Any]:
    """Run it; returns the summary (drain times, replica-seconds, scale-ups/downs, peaks) and the series."""
    p = argparse.ArgumentParser(prog="python -m bench.autoscale_live", description=__doc__.splitlines()[0])
    p.add_argument("--bursts", default="300,500", help="files per burst, comma-separated")
    p.add_argument("--burst-s", type=float, default=8.0, help="each burst's files are written over this long")
    p.add_argument("--quiet", type=float, default=75.0, help="seconds of nothing after each burst")
    p.add_argument("--item-s", type=float, default=0.5)
    p.add_argument("--max", type=int, default=8)
    p.add_argument("--policy", choices=["book", "lag"], default="book",
                   help="the manager's autoscaling policy: the book's rule, or KEDA's ceil(lag / lagCount)")
    p.add_argument("--lag-window", type=float, default=120.0,
                   help="--policy lag: scale-down stabilisation window (s; 120 as rendered for KEDA)")
    p.add_argument("--png", default=str(ROOT / "docs" / "autoscaling.png"))
    p.add_argument("--csv", default=str(ROOT / "out" / "autoscale_live.csv"))
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.bursts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bm-autoscale-"))
    (work / "data").mkdir()
    spec = work / "pipeline.yaml"
    spec.write_text(SPEC.format(python=sys.executable, item=ROOT / "examples" / "autoscale" / "item.py", max=a.max,
                                item_s=a.item_s))
    pipeline = load_pipeline(spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BATCHMESH_AUTOSCALE_POLICY": a.policy,
           "BATCHMESH_AUTOSCALE_LAG_WINDOW_S": str(a.lag_window)}
    log = (work / "run.log").open("w")
    rows: list[dict[str, Any]] = []
    bursts: list[tuple[float, float]] = []
    with redis_url(None, work / ".batchmesh" / "redis") as url:  # the run's embedded Redis (shared, see core)
        client = redis.Redis.from_url(url)
        run = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(spec), "--watch", "--quiet",
                                "--out", str(work / "out")], cwd=work, env=env, stdout=log, stderr=log,
                               start_new_session=True)
        started = time.monotonic()
        stop = threading.Event()

        def record() -> None:
            while not stop.is_set():
                try:
                    rows.append(sample(client, pipeline, started))
                except (redis.RedisError, KeyError):
                    pass
                stop.wait(0.5)

        recorder = threading.Thread(target=record, daemon=True)
        try:
            deadline = time.monotonic() + 60
            while not client.exists(Keys(pipeline.name).autoscale()):  # the manager's first decision
                if run.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the run did not start; see {work / 'run.log'}")
                time.sleep(0.2)
            recorder.start()
            time.sleep(5)
            bursts += feed(work / "data", sizes, a.burst_s, a.quiet, started)
        finally:
            stop.set()
            if recorder.is_alive():
                recorder.join(5)
            os.killpg(run.pid, signal.SIGINT)  # --watch ends on Ctrl-C
            try:
                run.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    rule = ("autoscaler defaults: ρ 0.8, T 30s, W 30s" if a.policy == "book" else
            f"lag policy: ceil(lag / 8), poll 10s, down-window {a.lag_window:g}s, -1 pod/60s, +4 pods/15s")
    title = (f"batchmesh run: one work stage (a subprocess per item, {a.item_s:g}s; concurrency 2; replicas "
             f"1..{a.max})\nbursts of {a.bursts} files over {a.burst_s:g}s (grey), then {a.quiet:g}s quiet; {rule}")
    window = 30.0 if a.policy == "book" else a.lag_window  # W of settings' default; the lag rule's window
    result = report(rows, bursts, sizes, Path(a.csv), Path(a.png), title, window)
    print(f"run log: {work / 'run.log'}")
    return {**result, "rows": rows, "bursts": bursts, "sizes": sizes, "policy": a.policy}


if __name__ == "__main__":
    raise SystemExit(main())
