"""The job both peers run: a no-op that returns its argument."""

from __future__ import annotations

from typing import Any


def noop(x: Any = None) -> Any:
    return x
