"""The generated Grafana dashboards validate against Grafana 11.6's JSON Schemas (../shared/schemas/grafana-v11.6:
the dashboard model, each panel kind's `Options` / `FieldConfig`, the Prometheus query), and broken dashboards do
not (the check can fail). Also: every query uses only the contract's metric names, `$__rate_interval` and the
fixed datasource uid; panel_queries substitutes every variable or refuses."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from services.core.spec import load_pipeline
from services.render.grafana import DATASOURCE_UID, dashboards, panel_queries, provisioning

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / ".." / "shared" / "schemas" / "grafana-v11.6"
# The metric names the dashboards may use (issue 8's contract), plus Prometheus' own `up`.
METRICS = {
    "batchmesh_items_in_total", "batchmesh_items_out_total", "batchmesh_items_failed_total",
    "batchmesh_items_dead_lettered_total", "batchmesh_items_reclaimed_total", "batchmesh_items_lost_total",
    "batchmesh_processing_seconds_bucket", "batchmesh_processing_seconds_sum", "batchmesh_processing_seconds_count",
    "batchmesh_workers", "batchmesh_redis_up", "batchmesh_redis_disconnects_total", "batchmesh_role_up",
    "batchmesh_backlog_items", "batchmesh_stage_lag_items", "batchmesh_stage_pending_items",
    "batchmesh_stage_arrivals_total", "batchmesh_stage_consumers", "batchmesh_stage_replicas_desired",
    "batchmesh_batch_items", "batchmesh_batch_complete", "batchmesh_redis_memory_used_bytes",
    "batchmesh_redis_memory_peak_bytes", "up",
}


def _schema(name: str) -> dict[str, Any]:
    path = SCHEMAS / f"{name}.jsonschema.json"
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"schema missing: {path} (CI has ../shared beside the checkout)")
        pytest.skip(f"schema missing: {path} (the shared/ folder beside the checkout)")
    return json.loads(path.read_text())


def _validator(schema: dict[str, Any], ref: str | None = None) -> Any:
    if ref is not None:
        schema = {"$ref": f"#/definitions/{ref}", "definitions": schema["definitions"]}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _messages(validator: Any, instance: Any, where: str) -> list[str]:
    found = []
    for error in validator.iter_errors(instance):
        if error.context:  # a oneOf (panel or row): say why the closest branch failed
            error = jsonschema.exceptions.best_match(error.context)
        found.append(f"{where}/{'/'.join(map(str, error.absolute_path))}: {error.message}")
    return found


def schema_errors(board: dict[str, Any]) -> list[str]:
    """Every way `board` breaks the 11.6 schemas: the dashboard model; per panel its kind's Options (required: we
    always set them, else this check would be vacuous) and custom FieldConfig; per target the Prometheus query."""
    errors = _messages(_validator(_schema("dashboard")), board, "dashboard")
    query = _validator(_schema("prometheus"))
    for i, panel in enumerate(p for p in board.get("panels", []) if isinstance(p, dict) and p.get("type") != "row"):
        where = f"panels/{i}({panel.get('title')})"
        kind_path = SCHEMAS / f"{panel.get('type')}.jsonschema.json"
        if not isinstance(panel.get("type"), str) or not kind_path.exists():
            errors.append(f"{where}: no schema for panel type {panel.get('type')!r}")
            continue
        kind = _schema(panel["type"])
        if "options" not in panel:
            errors.append(f"{where}: no options")
        else:
            errors += _messages(_validator(kind, "Options"), panel["options"], f"{where}/options")
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None and "FieldConfig" in kind["definitions"]:
            errors += _messages(_validator(kind, "FieldConfig"), custom, f"{where}/fieldConfig/defaults/custom")
        for j, target in enumerate(panel.get("targets", [])):
            errors += _messages(query, target, f"{where}/targets/{j}")
    return errors


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    pipelines = [load_pipeline(ROOT / "examples" / name / "pipeline.yaml") for name in ("wordcount", "signup")]
    return dashboards(pipelines)


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_two_dashboards_with_their_variables(boards: dict[str, dict[str, Any]]) -> None:
    assert set(boards) == {"batchmesh-overview.json", "batchmesh-stage.json"}
    variables = {name: {v["name"]: v for v in b["templating"]["list"]} for name, b in boards.items()}
    assert set(variables["batchmesh-overview.json"]) == {"pipeline"}
    assert set(variables["batchmesh-stage.json"]) == {"pipeline", "stage"}
    stage_vars = variables["batchmesh-stage.json"]
    assert stage_vars["pipeline"]["current"]["value"] == "wordcount"  # the first spec's name
    assert [o["value"] for o in stage_vars["pipeline"]["options"]] == ["wordcount", "signup"]
    assert stage_vars["stage"]["current"]["value"] == "map-0"  # its first work stage
    assert stage_vars["pipeline"]["query"].startswith("label_values(")
    assert "$pipeline" in stage_vars["stage"]["query"]


@pytest.mark.parametrize("name", ["batchmesh-overview.json", "batchmesh-stage.json"])
def test_generated_dashboards_validate(boards: dict[str, dict[str, Any]], name: str) -> None:
    assert schema_errors(boards[name]) == []


def _break_type(board: dict[str, Any]) -> None:
    board["panels"][0]["gridPos"]["w"] = "wide"


def _break_unknown_field(board: dict[str, Any]) -> None:
    board["panels"][0]["colour"] = "red"


def _break_options(board: dict[str, Any]) -> None:
    board["panels"][0]["options"]["legend"]["displayMode"] = "sideways"


def _break_missing_option(board: dict[str, Any]) -> None:
    del board["panels"][0]["options"]["tooltip"]


def _break_custom(board: dict[str, Any]) -> None:
    board["panels"][0]["fieldConfig"]["defaults"]["custom"]["lineWidth"] = "thick"


def _break_target(board: dict[str, Any]) -> None:
    board["panels"][0]["targets"][0]["exprs"] = board["panels"][0]["targets"][0].pop("expr")


def _break_variable(board: dict[str, Any]) -> None:
    board["templating"]["list"][0]["refresh"] = 7


def _break_dashboard_field(board: dict[str, Any]) -> None:
    board["owner"] = "me"


def _break_panel_kind(board: dict[str, Any]) -> None:
    board["panels"][0]["type"] = "no-such-panel"


@pytest.mark.parametrize("breakage", [_break_type, _break_unknown_field, _break_options, _break_missing_option,
                                      _break_custom, _break_target, _break_variable, _break_dashboard_field,
                                      _break_panel_kind])
def test_a_broken_dashboard_fails_the_check(boards: dict[str, dict[str, Any]], breakage: Any) -> None:
    board = copy.deepcopy(boards["batchmesh-overview.json"])
    assert board["panels"][0]["type"] == "timeseries"
    breakage(board)
    assert schema_errors(board), f"{breakage.__name__} went unnoticed"


def test_every_panel_is_described_and_uses_the_fixed_datasource(boards: dict[str, dict[str, Any]]) -> None:
    for board in boards.values():
        titles = [p["title"] for p in _panels(board)]
        assert len(titles) == len(set(titles)) and len({p["id"] for p in _panels(board)}) == len(titles)
        for panel in _panels(board):
            assert len(panel.get("description", "")) > 40, panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
            assert panel["targets"] and all(t["datasource"]["uid"] == DATASOURCE_UID for t in panel["targets"])
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == DATASOURCE_UID
    datasource = provisioning()["datasources/batchmesh.yaml"]["datasources"][0]
    assert datasource["uid"] == DATASOURCE_UID and datasource["type"] == "prometheus"


def test_queries_use_contract_metrics_and_the_rate_interval(boards: dict[str, dict[str, Any]]) -> None:
    used: set[str] = set()
    for board in boards.values():
        for panel in _panels(board):
            for target in panel["targets"]:
                expr = target["expr"]
                assert re.findall(r"\[([^\]]+)\]", expr) in ([], ["$__rate_interval"] * expr.count("[")), expr
                names = set(re.findall(r"\b(batchmesh_\w+|up)\s*\{", expr))
                assert names and names <= METRICS, expr
                assert "up" in names or 'pipeline="$pipeline"' in expr, expr
                if board["uid"] == "batchmesh-stage":
                    assert 'stage="$stage"' in expr, expr
                used |= names
    # what the dashboards promise to show
    assert {"batchmesh_items_out_total", "batchmesh_stage_lag_items", "batchmesh_stage_pending_items",
            "batchmesh_processing_seconds_bucket", "batchmesh_stage_replicas_desired", "batchmesh_stage_consumers",
            "batchmesh_items_failed_total", "batchmesh_items_dead_lettered_total", "batchmesh_batch_items",
            "batchmesh_redis_memory_used_bytes", "batchmesh_redis_up", "batchmesh_role_up", "up",
            "batchmesh_stage_arrivals_total", "batchmesh_items_reclaimed_total",
            "batchmesh_items_lost_total"} <= used


def test_panel_queries_substitutes_every_variable(boards: dict[str, dict[str, Any]]) -> None:
    queries = panel_queries(boards["batchmesh-stage.json"], {"pipeline": "wc", "stage": "map-0",
                                                              "__rate_interval": "20s"})
    assert len(queries) == sum(len(p["targets"]) for p in _panels(boards["batchmesh-stage.json"]))
    assert all("$" not in q for _, q in queries)
    assert ("Backlog: lag and pending", 'max(batchmesh_stage_lag_items{pipeline="wc", stage="map-0"})') in queries
    assert any("[20s]" in q for _, q in queries)


def test_panel_queries_reads_rows_and_braced_variables_and_refuses_unknown_ones() -> None:
    board = {"panels": [{"type": "row", "title": "r", "panels": [
        {"type": "timeseries", "title": "t", "targets": [{"expr": "x{a=\"${pipeline}\"}[$__range]"}]}]}]}
    assert panel_queries(board, {"pipeline": "p"}) == [("t", 'x{a="p"}[5m]')]
    with pytest.raises(KeyError, match="stage"):
        panel_queries({"panels": [{"title": "t", "targets": [{"expr": 'x{s="$stage"}'}]}]}, {"pipeline": "p"})
