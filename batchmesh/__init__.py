"""batchmesh's public API for pipeline code — import it by the distribution's name:

    from batchmesh import worker, WorkItem, load_pipeline

    @worker("count-words")
    def count_words(item: dict, output_dir: Path) -> dict:   # item: the WORK_ITEM_FILE document
        ...

`worker` registers an in-process worker by name (a pipeline's `plugins:` file or module is imported by every
role that runs it); `WorkItem` is the item as it travels on the streams; `load_pipeline` reads and validates a
pipeline.yaml (raising `SpecError` with every bad field). The implementation lives in the `services` package (one
sub-package per container role), which is internal: its layout may change, these names stay."""

from __future__ import annotations

from services.core.item import WorkItem
from services.core.spec import Pipeline, SpecError, load_pipeline
from services.workers.registry import worker

__all__ = ["Pipeline", "SpecError", "WorkItem", "__version__", "load_pipeline", "worker"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchmesh")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()
