"""Every worker-image extra a spec may name (`containers.extras`) is a real pyproject extra: the worker
Dockerfile installs `./[EXTRAS]`, and pip only warns, then builds an image without it, for a missing one."""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path

from services.core.spec_containers import ContainersSpec

ROOT = Path(__file__).resolve().parents[2]


def test_every_accepted_extra_is_in_pyproject() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    accepted = set(typing.get_args(typing.get_args(ContainersSpec.model_fields["extras"].annotation)[0]))
    assert accepted and accepted <= extras, accepted - extras
