"""A user's own pipeline on a real engine: `batchmesh render compose SPEC -o FILE` for a spec outside the repository,
into a directory of its own. Both Compose implementations accept the file, every bind mount's host path exists
(render wrote the Prometheus and Grafana files beside it), and `up` runs it: the spec's directory mounted into
the roles (its `command:` stage and its generator found there), Prometheus up, the batch done; a second `up`
after the input was consumed generates nothing (the marker in the output dir). `down -v` leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_project import ComposeProject, wait_for
from test_compose_config import _cli, _free_port

ROOT = Path(__file__).resolve().parents[2]
GEN = """\
import pathlib, sys
out = pathlib.Path(sys.argv[1])
for name, text in {"a.txt": "x", "b.txt": "bravo", "c.txt": "charlie"}.items():
    (out / name).write_text(text)
"""
STAGE = """\
import json, os
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
print(json.dumps({"name": item["data"]["name"], "upper": item["data"]["name"].upper()}))
"""
SPEC = {
    "apiVersion": "batchmesh/v1", "name": "mine",
    "source": {"path": "./in", "glob": "*.txt", "poll": "1s"},
    "stages": {"big": {"filter": {"input": "source", "where": "data.size > `1`"}},  # a.txt (1 byte) filtered out
               "shout": {"work": {"input": "big", "command": ["python", "stage.py"]}}},
    "containers": {"generate": ["python", "gen.py", "{input}"]},
}


def _render(spec_dir: Path, out: Path) -> None:
    spec_dir.mkdir(parents=True)
    (spec_dir / "gen.py").write_text(GEN)
    (spec_dir / "stage.py").write_text(STAGE)
    (spec_dir / "pipeline.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "services.cli", "render", "compose", str(spec_dir / "pipeline.yaml"),
                           "-o", str(out)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def _bind_sources(config: dict[str, Any]) -> list[str]:
    return [v["source"] for svc in config["services"].values() for v in svc.get("volumes", []) if v["type"] == "bind"]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - a localhost URL of this test
        return json.load(reply)


@pytest.mark.timeout(300)
def test_own_pipeline_renders_everything_it_mounts_and_runs(docker_client: Any, mesh_image: str,
                                                             tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    compose_file = deploy / "mine.yml"
    _render(tmp_path / "specs" / "mine", compose_file)
    inp, out = tmp_path / "input", tmp_path / "out"
    manager_port, prometheus_port = _free_port(), _free_port()
    env = {"BATCHMESH_INPUT": str(inp), "BATCHMESH_OUTPUT": str(out), "BATCHMESH_UID": str(os.getuid()),
           "BATCHMESH_GID": str(os.getgid()), "BATCHMESH_MANAGER_PORT": str(manager_port),
           "BATCHMESH_PROMETHEUS_PORT": str(prometheus_port)}
    for cli in ("v2+", "v1"):
        done = subprocess.run([*_cli(cli), "-f", str(compose_file), "config", "-q"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **env})
        assert done.returncode == 0, f"{cli} config -q:\n{done.stderr}"
    project = ComposeProject(compose_file, f"bmown-{uuid.uuid4().hex[:8]}", env, docker_client, _cli("v2+"))
    # every bind mount's host path exists, the data dirs aside (the test's own, created by Docker, then chowned)
    config = json.loads(project.run("config", "--format", "json").stdout)
    missing = [s for s in _bind_sources(config) if not Path(s).exists() and s not in (str(inp), str(out))]
    assert missing == [], f"bind-mount sources render did not write: {missing}"
    assert str(tmp_path / "specs" / "mine") in _bind_sources(config)
    services = [s for s in project.services() if s != "grafana"]
    status_url = f"http://127.0.0.1:{manager_port}/api/v1/status"
    try:
        project.run("up", "-d", "--wait", *services, timeout=180)
        status = wait_for(lambda: (s := _get(status_url))["batch_done"] and s["stages"]["shout"]["out"] == 2 and s,
                          90, "the batch done", project)
        assert status["stages"]["big"].get("filtered") == 1, status
        targets = wait_for(lambda: [t for t in _get(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")[
            "data"]["activeTargets"] if t["health"] == "up"], 60, "Prometheus scraping a role", project)
        assert {t["labels"]["job"] for t in targets} & {"source", "manager", "worker"}, targets
        assert (out / ".batchmesh-generated").exists()
        # the input consumed (the images' join deletes its originals): a second `up` must not generate again
        for path in inp.glob("*.txt"):
            path.unlink()
        project.run("up", "-d", "--wait", *services, timeout=180)
        logs = wait_for(lambda: "generated once already" in (text := project.run("logs", "generate").stdout) and text,
                        60, "generate skipped", project)
        assert logs and sorted(p.name for p in inp.iterdir()) == []
        assert _get(status_url)["stages"]["shout"]["out"] == 2
    finally:
        project.down()
    assert project.leftovers() == {"containers": [], "volumes": [], "networks": []}
