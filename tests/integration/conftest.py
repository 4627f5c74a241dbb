"""Fixtures of the manager tests: a directory of files served by the real source ambassador."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    import uvicorn

    from services.source import create_app
    from services.source.backends import DirectoryBackend

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(DirectoryBackend(source_dir, cache_ttl=0)), port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
