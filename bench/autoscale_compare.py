"""The book's rule against the plain lag-threshold policy, live: the same bursts through the same work stage under
`batchmesh run`, once per policy, the manager's autoscaler set to each in turn (BATCHMESH_AUTOSCALE_POLICY).

    python -m bench.autoscale_compare [--runs 2] [--policies book,lag,lag:30] [--bursts 300,500] [--burst-s 8]
                                      [--quiet 120] [--item-s 0.5] [--max 8]
                                      [--png docs/autoscaling-compare.png] [--csv out/autoscale_compare.csv]

Each run is bench/autoscale_live.py's (a subprocess per item, ITEM_SECONDS of wall time, concurrency 2, replicas
1..max; the local runner starts and stops `batchmesh worker` replicas as the manager decides). Policies:
- `book`: services.manager.autoscale.Rule, the defaults (ρ 0.8, T 30 s, W 30 s);
- `lag`: services.manager.autoscale.LagRule, KEDA's replicas = ceil(lag / lagCount) with lagCount = concurrency
  × 4 and the behaviour rendered into our ScaledObjects (poll 10 s; scale-down stabilised over 120 s, one pod per
  60 s; scale-up four pods per 15 s); `lag:W` the same with a W-second stabilisation window.
Runs alternate the policies (book, lag, book, lag, ...) so that a noisy spell of the shared machine hits both.

Per policy (median over runs; every run in the CSV): the time to drain each burst (first file written -> backlog 0,
every item done), replica-seconds (live worker replicas × time, from their heartbeats), peak replicas, scale-downs,
the most scale-downs within any one stabilisation window (the policy's own, and the book's 30 s), and the book's
replica-seconds ÷ the policy's. The aim (issue 9): the book drains each burst at least as fast with <= 0.7x the
lag policy's replica-seconds, and scales down at most once per window. A plot of backlog and running replicas of
each policy's last run goes to the PNG. `--also` takes earlier runs' CSVs into the medians."""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import Any

from .autoscale_live import downs_per_window, live

ROOT = Path(__file__).resolve().parents[1]
BOOK_WINDOW_S = 30.0
RATIOS = {"book_replica_s_ratio", "replica_s_vs_book"}  # computed over the medians, never read back


def policy_args(policy: str) -> tuple[list[str], float]:
    """`book`, `lag` or `lag:W` -> (autoscale_live's arguments, the policy's stabilisation window in s)."""
    name, _, window = policy.partition(":")
    if name == "book" and not window:
        return ["--policy", "book"], BOOK_WINDOW_S
    if name == "lag":
        w = float(window) if window else 120.0
        return ["--policy", "lag", "--lag-window", f"{w:g}"], w
    raise SystemExit(f"unknown policy {policy!r}: give book, lag or lag:SECONDS")


def row_of(policy: str, run: int, r: dict[str, Any]) -> dict[str, Any]:
    downs = r["scale_down_times"]
    out = {"policy": policy, "run": run}
    out |= {f"drain_b{i + 1}_s": d for i, d in enumerate(r["drain_s"])}
    out |= {"replica_s": r["replica_s"], "peak_running": r["peak_running"], "scale_ups": r["scale_ups"],
            "scale_downs": r["scale_downs"], "window_s": r["window_s"], "max_downs_per_window": r["downs_per_window"],
            f"max_downs_per_{BOOK_WINDOW_S:g}s": downs_per_window(downs, BOOK_WINDOW_S)}
    return out


def earlier(path: Path, policies: list[str]) -> list[dict[str, Any]]:
    """The per-run rows of an earlier CSV of this script (numbers parsed back), for the given policies."""
    out = []
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["run"] == "median" or row["policy"] not in policies:
                continue
            out.append({k: (row[k] if k == "policy" else None if row[k] in ("", "None") else float(row[k]))
                        for k in row if k not in RATIOS} | {"run": int(row["run"])})
    return out


def medians(rows: list[dict[str, Any]], policies: list[str]) -> list[dict[str, Any]]:
    out = []
    for p in policies:
        mine = [r for r in rows if r["policy"] == p]
        med: dict[str, Any] = {"policy": p, "run": "median"}
        for k in dict.fromkeys(k for r in mine for k in r):
            if k in ("policy", "run") or not all(k in r for r in mine):
                continue
            values = [r[k] for r in mine]
            med[k] = None if any(v is None for v in values) else statistics.median(values)
        out.append(med)
    book = next((m for m in out if m["policy"] == "book"), None)
    for m in out:
        m["book_replica_s_ratio"] = (None if not book or not m["replica_s"] else  # the aim: <= 0.7
                                     round(book["replica_s"] / m["replica_s"], 2))
    return out


def table(meds: list[dict[str, Any]], runs: int) -> str:
    drains = sorted(k for k in meds[0] if k.startswith("drain_b"))
    head = ["policy", *(f"drain b{i + 1} s" for i in range(len(drains))), "replica-s", "book ÷ this", "peak",
            "downs", "max downs/own W", f"max downs/{BOOK_WINDOW_S:g}s"]
    lines = [head]
    for m in meds:
        lines.append([m["policy"], *("-" if m[k] is None else f"{m[k]:.1f}" for k in drains), f"{m['replica_s']:.0f}",
                      f"{m['book_replica_s_ratio']:.2f}", f"{m['peak_running']:g}", f"{m['scale_downs']:g}",
                      f"{m['max_downs_per_window']:g} / {m['window_s']:g}s",
                      f"{m[f'max_downs_per_{BOOK_WINDOW_S:g}s']:g}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
            for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return f"median of {runs} run(s) per policy\n" + "\n".join(text)


def aim(meds: list[dict[str, Any]]) -> list[str]:
    """What of the aim fails (empty: met), against every lag policy."""
    book = next(m for m in meds if m["policy"] == "book")
    fails = []
    drains = sorted(k for k in book if k.startswith("drain_b"))
    for o in (m for m in meds if m["policy"] != "book"):
        slower = [k for k in drains if book[k] is None or (o[k] is not None and book[k] > o[k])]
        if slower:
            fails.append(f"book drains {', '.join(slower)} slower than {o['policy']}")
        if book["replica_s"] > 0.7 * o["replica_s"]:
            fails.append(f"book spends {book['replica_s'] / o['replica_s']:.2f}x the replica-seconds of {o['policy']}")
    if book["max_downs_per_window"] > 1:
        fails.append(f"book scales down {book['max_downs_per_window']:g} times within {book['window_s']:g}s")
    return fails


def plot(last: dict[str, dict[str, Any]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ["tab:red", "tab:blue", "tab:purple", "tab:brown"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    for colour, (policy, r) in zip(colours, last.items(), strict=False):
        shift = r["bursts"][0][0]  # runs start at different moments: align their first bursts
        t = [x["t"] - shift for x in r["rows"]]
        label = f"{policy}: {r['replica_s']} replica-s, drains {r['drain_s']} s"
        top.plot(t, [x["backlog"] for x in r["rows"]], color=colour, label=label)
        bottom.step(t, [x["running"] for x in r["rows"]], where="post", color=colour, label=policy)
    top.set_ylabel("backlog (lag + pending)")
    top.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("running worker replicas")
    bottom.set_xlabel("seconds since the first burst began")
    bottom.legend(loc="upper right", fontsize=8)
    first = next(iter(last.values()))
    for ax in (top, bottom):
        for a, b in first["bursts"]:
            ax.axvspan(a - first["bursts"][0][0], b - first["bursts"][0][0], color="grey", alpha=0.15)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.autoscale_compare", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--policies", default="book,lag,lag:30")
    p.add_argument("--bursts", default="300,500")
    p.add_argument("--burst-s", type=float, default=8.0)
    p.add_argument("--quiet", type=float, default=120.0)
    p.add_argument("--item-s", type=float, default=0.5)
    p.add_argument("--max", type=int, default=8)
    p.add_argument("--png", default=str(ROOT / "docs" / "autoscaling-compare.png"))
    p.add_argument("--csv", default=str(ROOT / "out" / "autoscale_compare.csv"))
    p.add_argument("--also", nargs="*", default=[], metavar="CSV",
                   help="earlier runs' CSVs (this script's) to take into the medians, e.g. after a cut-off session")
    a = p.parse_args(argv)
    policies = a.policies.split(",")
    if "book" not in policies:
        raise SystemExit("--policies must include book (the ratios are against it)")
    common = ["--bursts", a.bursts, "--burst-s", str(a.burst_s), "--quiet", str(a.quiet), "--item-s", str(a.item_s),
              "--max", str(a.max)]
    out = Path(a.csv)
    rows: list[dict[str, Any]] = [r for path in a.also for r in earlier(Path(path), policies)]
    first = max((int(r["run"]) for r in rows), default=0) + 1
    last: dict[str, dict[str, Any]] = {}
    for run in range(first, first + a.runs):
        for policy in policies:
            args, _ = policy_args(policy)
            tag = policy.replace(":", "-")
            print(f"== run {run}, policy {policy}", flush=True)
            r = live([*common, *args, "--png", str(out.parent / f"autoscale_compare_{tag}_{run}.png"),
                      "--csv", str(out.parent / f"autoscale_compare_{tag}_{run}.csv")])
            rows.append(row_of(policy, run, r))
            last[policy] = r
    meds = medians(rows, policies)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in [*rows, *meds] for k in r))
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*rows, *meds])
    print(table(meds, len(rows) // len(policies)))
    fails = aim(meds)
    print("aim met: drains every burst at least as fast, <= 0.7x replica-seconds, <= 1 scale-down per window"
          if not fails else "aim NOT met: " + "; ".join(fails))
    title = (f"batchmesh run, live: the book's rule vs KEDA's ceil(lag / lagCount); a subprocess per item "
             f"({a.item_s:g}s), concurrency 2, replicas 1..{a.max}\nbursts of {a.bursts} files over {a.burst_s:g}s "
             f"(grey), then {a.quiet:g}s quiet; run {first + a.runs - 1} of each policy (the last)")
    plot(last, Path(a.png), title)
    print(f"table: {out}; plot: {a.png}")
    return 0 if not fails else 1


if __name__ == "__main__":
    raise SystemExit(main())
