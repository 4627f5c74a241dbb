"""A work stage's `container:` section (executor docker): defaults, sizes, and each mistake a SpecError naming the
bad field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.core.spec import SpecError, load_pipeline
from services.core.spec_container import NOBODY, StageContainer, parse_size


def load(tmp_path: Path, work: dict[str, Any]) -> Any:
    spec = {"apiVersion": "batchmesh/v1", "name": "p", "source": {"path": "."},
            "stages": {"w": {"work": {"input": "source", "command": ["python", "w.py"], **work}}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_pipeline(path).stages["w"].body


def error(tmp_path: Path, work: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(tmp_path, work)
    return info.value


def test_defaults_are_the_sandbox(tmp_path: Path) -> None:
    work = load(tmp_path, {"executor": "docker", "container": {"image": "batchmesh-worker:0.1.0"}})
    box = work.container
    assert (box.network, box.memory, box.cpus, box.pids, box.tmp, box.mounts) == (
        False, 512 * 1024**2, 1.0, 256, 64 * 1024**2, [])
    assert box.user is None
    assert box.run_user == (NOBODY if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}")


def test_sizes_and_user(tmp_path: Path) -> None:
    work = load(tmp_path, {"executor": "docker", "container": {
        "image": "img", "memory": "1.5g", "tmp": "16M", "cpus": 0.5, "user": "1000:1000", "network": True}})
    assert work.container.memory == int(1.5 * 1024**3) and work.container.tmp == 16 * 1024**2
    assert work.container.run_user == "1000:1000"
    assert StageContainer(image="x", user="1234").run_user == "1234:1234"  # never the engine's default gid 0
    assert parse_size(4096) == 4096 and parse_size("64k") == 65536


@pytest.mark.parametrize(("work", "path", "words"), [
    ({"executor": "docker"}, "stages.w.work", "executor docker needs a container"),
    ({"executor": "docker", "container": {}}, "stages.w.work.container.image", "required"),
    ({"executor": "process", "container": {"image": "img"}}, "stages.w.work", "executor docker only"),
    ({"executor": "docker", "container": {"image": "img", "memory": "lots"}}, "stages.w.work.container.memory",
     "not a size"),
    ({"executor": "docker", "container": {"image": "img", "memory": "512"}}, "stages.w.work.container.memory",
     "minimum of 6m"),
    ({"executor": "docker", "container": {"image": "img", "memory": "5m"}}, "stages.w.work.container.memory",
     "minimum"),
    ({"executor": "docker", "container": {"image": "img", "cpus": 0}}, "stages.w.work.container.cpus", "greater"),
    ({"executor": "docker", "container": {"image": "img", "pids": 2}}, "stages.w.work.container.pids", "8"),
    ({"executor": "docker", "container": {"image": "img", "user": "0:0"}}, "stages.w.work.container.user", "root"),
    ({"executor": "docker", "container": {"image": "img", "user": "0"}}, "stages.w.work.container.user", "root"),
    ({"executor": "docker", "container": {"image": "img", "user": "10001:0"}}, "stages.w.work.container.user",
     "gid 0"),
    ({"executor": "docker", "container": {"image": "img", "user": "worker"}}, "stages.w.work.container.user",
     "numeric"),
    ({"executor": "docker", "container": {"image": "img", "mounts": ["/"]}}, "stages.w.work.container.mounts",
     "root"),
    ({"executor": "docker", "container": {"image": "img", "mounts": ["/var/run/docker.sock"]}},
     "stages.w.work.container.mounts", "socket"),
    ({"executor": "docker", "container": {"image": "img", "privileged": True}},
     "stages.w.work.container.privileged", "not permitted"),
])
def test_mistakes_name_the_field(tmp_path: Path, work: dict[str, Any], path: str, words: str) -> None:
    exc = error(tmp_path, work)
    assert exc.path == path and words in exc.reason, exc


def test_model_alone() -> None:
    assert StageContainer(image="x", memory="6m").memory == 6 * 1024**2
