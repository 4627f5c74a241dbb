"""Fixtures of the manager tests: a directory of files served by the real source ambassador."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from promql import free_port  # noqa: F401 (the integration tests import it from here)
from source_server import serve


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(25):
        (root / f"f{i:03d}.txt").write_text(f"file {i}")
    return root


@pytest.fixture
def source_url(source_dir: Path) -> Iterator[str]:
    """The real source ambassador over `source_dir` (no listing cache: new files show at once)."""
    from services.source import create_app
    from services.source.backends import DirectoryBackend

    with serve(create_app(DirectoryBackend(source_dir, cache_ttl=0))) as url:
        yield url
