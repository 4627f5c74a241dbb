"""The worker runtime: stream workers (`run_worker`), the one-shot worker (`run_once`), in-process workers
registered with `@worker`, and the multi-worker chain of adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import builtin as _builtin  # noqa: F401  (registers noop, echo, sleep)
from .registry import resolve, worker

if TYPE_CHECKING:
    from .once import run_once
    from .runtime import run_worker

__all__ = ["resolve", "run_once", "run_worker", "worker"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m services.workers.once` must not find its own module already imported by
    # the package (runpy warns on stderr, which is where a worker's failure reason goes).
    if name == "run_once":
        from .once import run_once

        return run_once
    if name == "run_worker":
        from .runtime import run_worker

        return run_worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
