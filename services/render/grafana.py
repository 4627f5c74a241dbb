"""Grafana dashboards and provisioning for a batchmesh deployment, generated from the pipeline specs.

Two dashboards, both over the metric names of services/core/metrics.py and the manager's cluster gauges:
`batchmesh-overview.json` (every stage of `$pipeline`) and `batchmesh-stage.json` (one `$stage`). Both pick the
pipeline and stage from Prometheus (`label_values`), defaulting to the first spec given, so one pair serves every
pipeline a Prometheus scrapes and a new stage shows up without regenerating anything.

Rules followed, by source:
- rates use `$__rate_interval` (Grafana docs, "Prometheus data source / Query editor": at least four scrape
  intervals, so a rate always spans two samples); the datasource's `timeInterval` is the scrape interval;
- per-process counters are summed over processes (`sum by (stage)`); cluster gauges the manager reads from Redis
  are taken with `max`, so two manager replicas do not double the backlog;
- quantiles are `histogram_quantile(q, sum by (le, ...) (rate(..._bucket[...])))` (Prometheus docs, "Histograms
  and summaries": aggregate the bucket rates, keep `le`);
- provisioning files follow Grafana's "Provision Grafana" docs (apiVersion 1, `datasources`, `providers`).

`python -m services.render.grafana --write compose/ [PIPELINE.yaml ...]` writes compose/grafana/... and
compose/prometheus/alerts.yml (see write_all)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from services.core.spec import Pipeline, load_pipeline

from . import alerts
from .alerts import ROLE_JOBS
from .grafana_panels import DATASOURCE, DATASOURCE_UID, bars, graph, health, histogram_heatmap, ratio_gauge

__all__ = ["DATASOURCE_UID", "dashboards", "panel_queries", "provisioning", "write_all"]

P = 'pipeline="$pipeline"'
S = 'pipeline="$pipeline", stage="$stage"'
RATE = "[$__rate_interval]"
ITEMS_PER_S = "suffix: items/s"


def _quantile(q: float, selector: str, by: str) -> str:
    keep = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({keep}) (rate(batchmesh_processing_seconds_bucket{{{selector}}}{RATE})))"


def _overview_panels() -> list[sdk.Panel]:
    return [
        graph("Items per second by stage", "Items each stage completed per second (published downstream and "
              "acknowledged), summed over its replicas.",
              [(f"sum by (stage) (rate(batchmesh_items_out_total{{{P}}}{RATE}))", "{{stage}}")], ITEMS_PER_S),
        graph("Backlog by stage: lag and pending", "Entries in each stage's input not yet acknowledged, stacked: "
              "lag = not yet delivered to any consumer, pending = delivered and being worked on (or held by a "
              "crashed consumer until reclaimed). A backlog that keeps growing means the stage is too slow.",
              [(f"max by (stage) (batchmesh_stage_lag_items{{{P}}})", "{{stage}} lag"),
               (f"max by (stage) (batchmesh_stage_pending_items{{{P}}})", "{{stage}} pending")],
              "short", stacked=True),
        graph("Processing time p50 / p99 by stage", "Time to process one item: median and 99th percentile over "
              "the last rate interval, from the processing-time histogram of every replica.",
              [(_quantile(0.5, P, "stage"), "{{stage}} p50"), (_quantile(0.99, P, "stage"), "{{stage}} p99")], "s"),
        graph("Replicas: desired vs running", "Desired = the autoscaler's replica count for the stage (service "
              "time vs arrival rate, plus backlog drain); running = consumers reading the stage's input. Running "
              "below desired for long means replicas fail to start.",
              [(f"max by (stage) (batchmesh_stage_replicas_desired{{{P}}})", "{{stage}} desired"),
               (f"max by (stage) (batchmesh_stage_consumers{{{P}}})", "{{stage}} running")], "short"),
        graph("Retries (failed attempts per second)", "Failed attempts per second by stage: each one is retried "
              "until the delivery cap, then dead-lettered.",
              [(f"sum by (stage) (rate(batchmesh_items_failed_total{{{P}}}{RATE}))", "{{stage}}")], ITEMS_PER_S),
        graph("Dead letters", "Items moved to a stage's dead-letter stream per interval (delivery cap reached or "
              "unprocessable). Inspect them with `batchmesh dlq list`, bring them back with `batchmesh dlq replay`.",
              [(f"sum by (stage) (increase(batchmesh_items_dead_lettered_total{{{P}}}{RATE}))", "{{stage}}")],
              "short", bars=True),
        ratio_gauge("Batch progress", "Share of the current batch's listed items that are done.",
                    [(f'max(batchmesh_batch_items{{{P}, state="done"}}) / '
                      f'clamp_min(max(batchmesh_batch_items{{{P}, state="listed"}}), 1)', "done")]),
        bars("Batch items by state", "Items of the current batch by state: listed (found by the source), queued, "
             "running, done, failed (will be retried), dead (dead-lettered).",
             [(f"max by (state) (batchmesh_batch_items{{{P}}})", "{{state}}")]),
        graph("Redis memory", "Memory Redis uses (used) and its high-water mark (peak). Trimming keeps it "
              "bounded by what is in flight; steady growth means something is not being trimmed.",
              [(f"max(batchmesh_redis_memory_used_bytes{{{P}}})", "used"),
               (f"max(batchmesh_redis_memory_peak_bytes{{{P}}})", "peak")], "bytes"),
        health("Health: roles and Redis", "UP/DOWN per scrape target (Prometheus `up`, by job = role), per role's "
               "view of Redis (`batchmesh_redis_up`) and per role's own readiness (`batchmesh_role_up`).",
               [(f'up{{job=~"{ROLE_JOBS}"}}', "{{job}} {{instance}}"),
                (f"min by (role) (batchmesh_redis_up{{{P}}})", "Redis from {{role}}"),
                (f"min by (role, stage) (batchmesh_role_up{{{P}}})", "{{role}} {{stage}}")]),
    ]


def _stage_panels() -> list[sdk.Panel]:
    def rate(metric: str) -> str:
        return f"sum(rate({metric}{{{S}}}{RATE}))"

    return [
        graph("In / out / failed / dead-lettered", "Items the stage read, completed, failed (attempts) and "
              "dead-lettered per second, over all its replicas.",
              [(rate("batchmesh_items_in_total"), "in"), (rate("batchmesh_items_out_total"), "out"),
               (rate("batchmesh_items_failed_total"), "failed"),
               (rate("batchmesh_items_dead_lettered_total"), "dead-lettered")], ITEMS_PER_S),
        graph("Backlog: lag and pending", "Entries in the stage's input not yet acknowledged, stacked: lag (not "
              "delivered yet) and pending (delivered, not acknowledged).",
              [(f"max(batchmesh_stage_lag_items{{{S}}})", "lag"),
               (f"max(batchmesh_stage_pending_items{{{S}}})", "pending")], "short", stacked=True),
        graph("Arrivals vs completions", "Entries entering the stage's input per second vs items it completes per "
              "second. Arrivals above completions for long = the backlog grows: scale up.",
              [(f"max(rate(batchmesh_stage_arrivals_total{{{S}}}{RATE}))", "arrivals"),
               (rate("batchmesh_items_out_total"), "completions")], ITEMS_PER_S),
        graph("Processing time quantiles", "Time to process one item: p50, p90, p99 and the mean over the last "
              "rate interval.",
              [(_quantile(0.5, S, ""), "p50"), (_quantile(0.9, S, ""), "p90"), (_quantile(0.99, S, ""), "p99"),
               (f"{rate('batchmesh_processing_seconds_sum')} / {rate('batchmesh_processing_seconds_count')}",
                "mean")], "s"),
        histogram_heatmap("Processing time heatmap", "How many items took how long, per interval: one row per "
                          "histogram bucket (upper bound `le`). Two bands = two kinds of items (or retries).",
                          (f"sum by (le) (increase(batchmesh_processing_seconds_bucket{{{S}}}{RATE}))", "{{le}}")),
        graph("Consumers vs desired replicas", "Consumers reading the stage's input (from Redis), the replica "
              "count the autoscaler wants, and consumer threads the stage's processes report.",
              [(f"max(batchmesh_stage_consumers{{{S}}})", "running"),
               (f"max(batchmesh_stage_replicas_desired{{{S}}})", "desired"),
               (f"sum(batchmesh_workers{{{S}}})", "in processes")], "short"),
        graph("Reclaims and lost entries", "Entries reclaimed from consumers idle past the visibility timeout "
              "(a crashed or stuck replica), and pending entries trimmed before they were processed (lost: "
              "should stay 0).",
              [(f"sum(increase(batchmesh_items_reclaimed_total{{{S}}}{RATE}))", "reclaimed"),
               (f"sum(increase(batchmesh_items_lost_total{{{S}}}{RATE}))", "lost")], "short", bars=True),
    ]


def _variable(name: str, label: str, query: str, default: str, options: list[str]) -> sdk.QueryVariable:
    return (sdk.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
            .current(dm.VariableOption(selected=True, text=default, value=default))
            .options([dm.VariableOption(selected=o == default, text=o, value=o) for o in options])
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))


def _dashboard(uid: str, title: str, description: str, variables: list[sdk.QueryVariable],
               panels: list[sdk.Panel]) -> dict[str, Any]:
    board = (sdk.Dashboard(title).uid(uid).description(description).tags(["batchmesh"]).refresh("10s")
             .time("now-30m", "now").timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR).readonly()
             .link(sdk.DashboardLink("batchmesh").type(dm.DashboardLinkType.DASHBOARDS).tags(["batchmesh"])
                   .as_dropdown(True).include_vars(True).keep_time(True)))
    for variable in variables:
        board.with_variable(variable)
    for number, panel in enumerate(panels, start=1):
        board.with_panel(panel.id(number))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def dashboards(pipelines: list[Pipeline]) -> dict[str, dict]:
    """File name -> dashboard JSON (a plain dict). `$pipeline` defaults to the first pipeline, `$stage` to its
    first work stage (else its first stage); the other pipelines' names are the saved variable options."""
    if not pipelines:
        raise ValueError("need at least one pipeline")
    first = pipelines[0]
    names = [p.name for p in pipelines]
    stage = next(iter(first.work_stages()), next(iter(first.stages)))
    pipeline_var = _variable("pipeline", "Pipeline", "label_values(batchmesh_backlog_items, pipeline)",
                             first.name, names)
    stage_var = _variable("stage", "Stage", 'label_values(batchmesh_backlog_items{pipeline="$pipeline"}, stage)',
                          stage, list(first.stages))
    return {
        "batchmesh-overview.json": _dashboard(
            "batchmesh-overview", "batchmesh: pipeline overview",
            "Every stage of one pipeline: throughput, backlog, latency, replicas, retries, dead letters, batch "
            "progress, Redis memory and health.", [pipeline_var], _overview_panels()),
        "batchmesh-stage.json": _dashboard(
            "batchmesh-stage", "batchmesh: stage drill-down",
            "One stage of one pipeline: rates, backlog, arrivals vs completions, processing time, replicas, "
            "reclaims and lost entries.", [pipeline_var, stage_var], _stage_panels()),
    }


def provisioning(dashboards_dir: str = "/var/lib/grafana/dashboards", prometheus_url: str = "http://prometheus:9090",
                 scrape_interval: str = "5s") -> dict[str, dict]:
    """Path under Grafana's provisioning dir -> YAML-able dict: the Prometheus datasource (fixed uid, which every
    panel names) and a file provider loading the dashboards from `dashboards_dir`. `scrape_interval` must be
    Prometheus' own (5 s in compose, services/render/prometheus.py): Grafana derives `$__rate_interval` from it."""
    return {
        "datasources/batchmesh.yaml": {"apiVersion": 1, "datasources": [{
            "name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": True, "editable": False,
            "jsonData": {"timeInterval": scrape_interval, "httpMethod": "POST"}}]},
        "dashboards/batchmesh.yaml": {"apiVersion": 1, "providers": [{
            "name": "batchmesh", "orgId": 1, "folder": "batchmesh", "type": "file", "disableDeletion": False,
            "allowUiUpdates": False, "updateIntervalSeconds": 30,
            "options": {"path": dashboards_dir, "foldersFromFilesStructure": False}}]},
    }


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
BUILTINS = {"__interval": "15s", "__rate_interval": "1m", "__range": "5m"}


def _panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))  # a row's own panels
    return found


def panel_queries(dashboard: dict, variables: dict[str, str]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, with `$name` / `${name}` replaced from `variables`
    (keys without the `$`; `__interval`, `__rate_interval`, `__range` default to BUILTINS). A variable left
    unresolved raises KeyError: a query must never reach Prometheus with a `$` in it."""
    values = {**BUILTINS, **variables}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {match.string!r}")
        return values[name]

    return [(panel.get("title", ""), _VARIABLE.sub(value, target["expr"]))
            for panel in _panels(dashboard) for target in panel.get("targets", []) if target.get("expr")]


def rendered_files(pipelines: list[Pipeline]) -> dict[str, str]:
    """Path under the compose root -> file text: dashboards, provisioning and the alert rules."""
    files = {f"grafana/dashboards/{name}": json.dumps(board, indent=2) + "\n"
             for name, board in dashboards(pipelines).items()}
    files.update({f"grafana/provisioning/{path}": yaml.safe_dump(data, sort_keys=False)
                  for path, data in provisioning().items()})
    files["prometheus/alerts.yml"] = yaml.safe_dump(alerts.rules(), sort_keys=False, width=1000)
    return files


def default_pipelines() -> list[Pipeline]:
    """The examples' pipelines, in name order: what the committed compose/ files are rendered from."""
    root = Path(__file__).resolve().parents[2]
    return sorted((load_pipeline(p) for p in root.glob("examples/*/pipeline.yaml")), key=lambda p: p.name)


def write_all(root: Path, pipelines: list[Pipeline] | None = None) -> list[Path]:
    """Write rendered_files() under `root` (e.g. compose/); returns the paths written."""
    written = []
    for rel, text in rendered_files(pipelines or default_pipelines()).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.render.grafana", description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, required=True, metavar="ROOT", help="e.g. compose/")
    parser.add_argument("pipelines", nargs="*", help="pipeline.yaml files (default: examples/*/pipeline.yaml)")
    args = parser.parse_args(argv)
    for path in write_all(args.write, [load_pipeline(p) for p in args.pipelines] or None):
        print(path)  # noqa: T201 - a script's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
