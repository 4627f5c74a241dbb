"""Running the ambassador: build a backend from the pipeline spec's `source` and serve it with uvicorn."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from services.core.health import RoleHealth

from .app import create_app
from .auth import load_token
from .backends import backend_class
from .backends.base import SourceBackend
from .filter import FilteredBackend

log = logging.getLogger(__name__)


def build_backend(type: str, *, filter: str | None = None, pipeline: str | None = None,
                  **options: Any) -> SourceBackend:
    """The backend registered as `type` built with `options` (None values dropped, so spec defaults apply),
    wrapped in a FilteredBackend when `filter` is given. ValueError for an unknown type or bad options."""
    cls = backend_class(type)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        backend = cls(**options)
    except TypeError as exc:  # an option this backend does not take
        raise ValueError(f"bad options for source backend {type!r}: {exc}") from None
    return FilteredBackend(backend, filter, pipeline=pipeline) if filter is not None else backend


def serve(backend: SourceBackend, host: str = "0.0.0.0", port: int = 8080, pipeline: str = "default") -> None:
    """Serve Source API v1 until interrupted (uvicorn handles SIGINT/SIGTERM)."""
    log.info("source ambassador starting", extra={"pipeline": pipeline, "backend": backend.type_name,
                                                   "host": host, "port": port})
    token = load_token()  # BATCHMESH_SOURCE_TOKEN(_FILE); None: the API is open
    health = RoleHealth(pipeline, "source", uses_redis=False).started()  # batchmesh_role_up
    try:
        uvicorn.run(create_app(backend, pipeline, token), host=host, port=port, log_level="warning")
    finally:
        health.stopped()
        backend.close()
        log.info("source ambassador stopped", extra={"pipeline": pipeline})
