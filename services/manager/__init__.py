"""The work-queue manager: diff the source's listing against what was dispatched, dispatch the rest, run the
stages' executors, report progress. Exports are loaded lazily, so an rq worker importing
`services.manager.executors.rq_job` does not pay for FastAPI and uvicorn on every job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manager import run_manager
    from .report import batch_done, status

__all__ = ["batch_done", "run_manager", "status"]


def __getattr__(name: str) -> Any:
    if name == "run_manager":
        from .manager import run_manager

        return run_manager
    if name in ("status", "batch_done"):
        from . import report as module

        return getattr(module, name)
    raise AttributeError(name)
