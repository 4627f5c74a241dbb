"""Grafana panel builders for the batchmesh dashboards, on grafana-foundation-sdk (11.6 flavour).

Every panel gets its options set in full, so the panel kind's JSON Schema (shared/schemas/grafana-v11.6/
<kind>.jsonschema.json, `definitions/Options`, whose `required` lists are what we fill in here) can check them.
Queries go to one Prometheus datasource by a fixed uid (`DATASOURCE`), which `grafana.provisioning()` creates."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, common, gauge, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

DATASOURCE_UID = "batchmesh-prometheus"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)

Query = tuple[str, str]  # (PromQL, legend format)
REF_IDS = "ABCDEFGH"
# The base threshold step: Grafana reads the first step as -Infinity whatever its value (validateFieldConfig) and
# writes null there, which the 11.6 schema's `Threshold.value: number` refuses; a number is valid for both.
BASE = 0
UP_DOWN = [dm.ValueMap(options={"0": dm.ValueMappingResult(text="DOWN", color="red"),
                                "1": dm.ValueMappingResult(text="UP", color="green")})]


def _targets(panel: sdk.Panel, queries: list[Query], instant: bool = False) -> sdk.Panel:
    if len(queries) > len(REF_IDS):
        raise ValueError(f"{len(queries)} queries on one panel; at most {len(REF_IDS)}")
    for ref, (expr, legend) in zip(REF_IDS, queries, strict=False):
        target = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
        panel.with_target(target.instant() if instant else target.range())
    return panel


def _legend() -> common.VizLegendOptions:
    return common.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST).placement(
        cm.LegendPlacement.BOTTOM).show_legend(True).calcs([])


def _reduce(calcs: list[str] | None = None) -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(calcs or ["lastNotNull"]).values(False)


def _text() -> common.VizTextDisplayOptions:
    return common.VizTextDisplayOptions()


def _common(panel: sdk.Panel, title: str, description: str, width: int, height: int) -> sdk.Panel:
    return panel.title(title).description(description).datasource(DATASOURCE).span(width).height(height)


def graph(title: str, description: str, queries: list[Query], unit: str, *, stacked: bool = False,
          bars: bool = False, width: int = 12, height: int = 8) -> sdk.Panel:
    """A time series: one line (or stacked area, or bars) per series."""
    panel = (timeseries.Panel().legend(_legend()).tooltip(
        common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        .unit(unit).line_width(1).fill_opacity(40 if stacked else 10).min(0)
        .draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
        .stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL if stacked else cm.StackingMode.NONE)))
    return _targets(_common(panel, title, description, width, height), queries)


def health(title: str, description: str, queries: list[Query], *, width: int = 24, height: int = 6) -> stat.Panel:
    """One tile per series, UP (green) or DOWN (red), coloured by the value mapping."""
    panel = (stat.Panel().graph_mode(cm.BigValueGraphMode.NONE).color_mode(cm.BigValueColorMode.BACKGROUND)
             .justify_mode(cm.BigValueJustifyMode.AUTO).text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
             .wide_layout(True).show_percent_change(False).reduce_options(_reduce())
             .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
             .orientation(cm.VizOrientation.AUTO).text(_text()).mappings(UP_DOWN)
             .thresholds(sdk.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
                 [dm.Threshold(value=BASE, color="red"), dm.Threshold(value=1, color="green")])))
    return _targets(_common(panel, title, description, width, height), queries, instant=True)


def ratio_gauge(title: str, description: str, queries: list[Query], *, width: int = 6,
                height: int = 8) -> gauge.Panel:
    """A 0..100 % gauge."""
    panel = (gauge.Panel().show_threshold_labels(False).show_threshold_markers(True)
             .sizing(cm.BarGaugeSizing.AUTO).min_viz_width(75).min_viz_height(75).reduce_options(_reduce())
             .orientation(cm.VizOrientation.AUTO).text(_text()).unit("percentunit").min(0).max(1)
             .thresholds(sdk.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
                 [dm.Threshold(value=BASE, color="blue"), dm.Threshold(value=1, color="green")])))
    return _targets(_common(panel, title, description, width, height), queries, instant=True)


def bars(title: str, description: str, queries: list[Query], unit: str = "short", *, width: int = 6,
         height: int = 8) -> bargauge.Panel:
    """Horizontal bars, one per series (e.g. items per state)."""
    panel = (bargauge.Panel().display_mode(cm.BarGaugeDisplayMode.GRADIENT).value_mode(cm.BarGaugeValueMode.COLOR)
             .name_placement(cm.BarGaugeNamePlacement.LEFT).show_unfilled(True).sizing(cm.BarGaugeSizing.AUTO)
             .min_viz_width(8).min_viz_height(16).max_viz_height(300).legend(_legend()).reduce_options(_reduce())
             .orientation(cm.VizOrientation.HORIZONTAL).text(_text()).unit(unit).min(0))
    return _targets(_common(panel, title, description, width, height), queries, instant=True)


def histogram_heatmap(title: str, description: str, query: Query, *, width: int = 12,
                      height: int = 8) -> heatmap.Panel:
    """A heatmap of a Prometheus histogram: one row per bucket (`le`), colour = items in it per interval."""
    panel = (heatmap.Panel().calculate(False)
             .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
                    .fill("dark-orange").exponent(0.5).steps(64).reverse(False))
             .show_value(cm.VisibilityMode.AUTO)
             .y_axis(heatmap.YAxisConfig().unit("s").axis_placement(cm.AxisPlacement.LEFT))
             .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
             .show_legend().mode(cm.TooltipDisplayMode.SINGLE).show_y_histogram().exemplars_color("orange"))
    panel = _common(panel, title, description, width, height)
    expr, legend = query
    return panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id("A")
                             .format(pm.PromQueryFormat.HEATMAP).datasource(DATASOURCE).range())
