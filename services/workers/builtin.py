"""Built-in in-process workers, registered on import: `noop`, `echo`, `sleep` (for tests and benchmarks)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .registry import worker

SLEEP_ENV = "BATCHMESH_SLEEP_SECONDS"


@worker("noop", writes=False)
def noop(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Does nothing: the floor of the runtime's own cost per item."""
    return {}


@worker("echo", writes=False)
def echo(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The item's data is the result: in a chain, passes data through unchanged."""
    return item["data"]


@worker("sleep", writes=False)
def sleep(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Sleeps `data.seconds`, else $BATCHMESH_SLEEP_SECONDS, else 0; passes the data on with `slept` added."""
    data = item["data"]
    seconds = float(data.get("seconds", os.environ.get(SLEEP_ENV, 0)))
    time.sleep(seconds)
    return {**data, "slept": seconds}
