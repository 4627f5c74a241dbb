"""The committed monitoring files under compose/ (Grafana dashboards and provisioning, Prometheus alert rules) are
exactly what services.render.grafana.write_all produces from the examples' pipelines. Regenerate with
`python -m services.render.grafana --write compose/`."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.render.grafana import default_pipelines, main, rendered_files, write_all

ROOT = Path(__file__).resolve().parents[2]


def test_committed_files_are_the_rendered_ones() -> None:
    rendered = rendered_files(default_pipelines())
    assert {"grafana/dashboards/batchmesh-overview.json", "grafana/dashboards/batchmesh-stage.json",
            "grafana/provisioning/datasources/batchmesh.yaml", "grafana/provisioning/dashboards/batchmesh.yaml",
            "prometheus/alerts.yml"} == set(rendered)
    stale = [rel for rel, text in rendered.items()
             if not (ROOT / "compose" / rel).exists() or (ROOT / "compose" / rel).read_text() != text]
    assert not stale, f"out of date: {stale}; run python -m services.render.grafana --write compose/"


def test_write_all_and_the_script_write_the_same_files(tmp_path: Path) -> None:
    written = write_all(tmp_path / "a")
    assert main(["--write", str(tmp_path / "b")]) == 0
    for path in written:
        rel = path.relative_to(tmp_path / "a")
        assert (tmp_path / "b" / rel).read_text() == path.read_text()
    provider = yaml.safe_load((tmp_path / "a/grafana/provisioning/dashboards/batchmesh.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
