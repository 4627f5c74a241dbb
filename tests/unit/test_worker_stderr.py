"""A worker's stderr is kept even when it succeeds (the last lines, in the role log); the live tail of
`batchmesh run -v` (tests/e2e/test_run_verbose.py runs it)."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from services.core.command import STDERR_LINES, run_command
from services.core.item import WorkItem
from services.runner.tail import LogTail


def test_a_successful_commands_stderr_tail_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = "import sys\nfor i in range(50): print(f'warning {i}', file=sys.stderr)\nprint('{}')"
    with caplog.at_level(logging.INFO, logger="services.core.command"):
        outcome = run_command([sys.executable, "-c", script], WorkItem(id="a.txt"), tmp_path / "o", timeout=30)
    assert outcome.ok
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "worker.stderr"]
    assert record.item == "a.txt"
    assert record.stderr.splitlines() == [f"warning {i}" for i in range(50 - STDERR_LINES, 50)]


def test_the_tail_shows_only_what_is_appended(tmp_path: Path) -> None:
    (tmp_path / "worker-a-0.log").write_text("old line\n")
    out = io.StringIO()
    tail = LogTail(tmp_path, out)
    with (tmp_path / "worker-a-0.log").open("a") as f:
        f.write(json.dumps({"level": "info", "msg": "worker stderr", "event": "worker.stderr", "item": "x.txt",
                            "command": "python", "stderr": "one\ntwo"}) + "\npartial")
    (tmp_path / "manager.log").write_text("printed by a worker\n")
    assert tail.pump() == 4
    assert out.getvalue().splitlines() == ["manager: printed by a worker", "worker-a-0: x.txt: stderr of python:",
                                           "worker-a-0:   one", "worker-a-0:   two"]
    with (tmp_path / "worker-a-0.log").open("a") as f:
        f.write(" line\n")
    tail.pump()
    assert out.getvalue().splitlines()[-1] == "worker-a-0: partial line"
