"""The source ambassador's HTTP face: Source API v1 (contract in DESIGN.md) over any SourceBackend."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from .backends.base import InvalidCursor, SourceBackend
from .filter import FilteredBackend
from .names import InvalidName, validate_name

log = logging.getLogger(__name__)

API_VERSION = "v1"
DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000

# Module level: created once per process, however many apps the tests build (the default registry rejects
# a second metric of the same name).
REQUESTS = Counter("batchmesh_source_requests", "Requests to the source API", ("pipeline", "endpoint"))


def create_app(backend: SourceBackend, pipeline: str = "default") -> FastAPI:
    """A FastAPI app serving `backend`. Handlers are sync: FastAPI runs them in its thread pool, so a slow
    directory scan does not block the event loop."""
    if isinstance(backend, FilteredBackend) and backend.pipeline is None:
        backend.pipeline = pipeline
    app = FastAPI(
        title="batchmesh source",
        version=API_VERSION,
        description=f"Source ambassador for pipeline {pipeline!r}: lists work items for the manager.",
    )

    def count(endpoint: str) -> None:
        REQUESTS.labels(pipeline, endpoint).inc()

    @app.get("/api/v1/items", summary="List items, one page at a time")
    def list_items(
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=8192, description="`next` of the previous page")] = None,
    ) -> dict[str, Any]:
        count("list")
        try:
            items, next_cursor = backend.list(limit, cursor or None)
        except InvalidCursor as exc:
            raise HTTPException(400, str(exc)) from None
        return {"kind": "ItemList", "apiVersion": API_VERSION, "items": items, "next": next_cursor}

    @app.get("/api/v1/items/{name:path}", summary="One item by name")
    def get_item(name: str, request: Request) -> dict[str, Any]:
        count("get")
        try:
            # Starlette's route regex ends in '$', which also matches before a final newline and drops it:
            # refuse rather than serve 'a.txt' for 'a.txt\n'.
            if not request.scope["path"].endswith(name):
                raise InvalidName("name contains a control character")
            item = backend.get(validate_name(name))
        except InvalidName as exc:
            raise HTTPException(400, f"bad item name: {exc}") from None
        if item is None:
            raise HTTPException(404, "no such item")  # the name is not echoed: it is attacker-controlled
        return item

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, str]:
        count("healthz")
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        count("metrics")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    log.debug("source app created", extra={"pipeline": pipeline, "backend": backend.type_name})
    return app
