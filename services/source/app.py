"""The source ambassador's HTTP face: Source API v1 (contract in DESIGN.md) over any SourceBackend."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from services.core import strict_json

from .api_models import GET_RESPONSES, LIST_RESPONSES, METRICS_RESPONSES, Health, Item
from .auth import require_token
from .backends.base import InvalidCursor, SourceBackend
from .filter import FilteredBackend
from .names import InvalidName, printable, validate_name

log = logging.getLogger(__name__)

API_VERSION = "v1"
DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000

# Module level: created once per process, however many apps the tests build (the default registry rejects
# a second metric of the same name).
REQUESTS = Counter("batchmesh_source_requests", "Requests to the source API", ("pipeline", "endpoint"))
SKIPPED = Counter("batchmesh_source_skipped", "Distinct source records the source could not serve (skipped; "
                  "reason bad-name: a file name that is not a safe UTF-8 name, malformed: a bad JSONL line)",
                  ("pipeline", "reason"))
SEEN_CAP = 100_000  # distinct skipped records remembered for the counter (beyond: counted again per listing)


def _encode_page(items: list[dict[str, Any]], skipped: list[dict[str, Any]], next_cursor: str | None) -> bytes:
    """The ItemList as UTF-8 JSON. An item that cannot be encoded (a lone surrogate from a backend that let one
    through) is moved to `skipped` instead of failing the whole page with a 500 — for ever, at every listing."""
    body = {"kind": "ItemList", "apiVersion": API_VERSION, "items": items, "next": next_cursor, "skipped": skipped}
    try:
        return strict_json.dumps(body).encode()
    except UnicodeEncodeError:
        good = []
        for item in items:
            try:
                strict_json.dumps(item).encode()
                good.append(item)
            except UnicodeEncodeError:
                skipped.append({"record": printable(str(item.get("name", "?"))), "reason": "bad-name",
                                "detail": "the item holds text that is not valid UTF-8"})
        body["items"] = good
        return strict_json.dumps(body, ensure_ascii=True).encode()


def create_app(backend: SourceBackend, pipeline: str = "default", token: str | None = None) -> FastAPI:
    """A FastAPI app serving `backend`. Handlers are sync: FastAPI runs them in its thread pool, so a slow
    directory scan does not block the event loop. `token`: /api/v1 wants it as a bearer token (source.auth)."""
    api = require_token(token)  # [] without a token
    if isinstance(backend, FilteredBackend) and backend.pipeline is None:
        backend.pipeline = pipeline
    app = FastAPI(
        title="batchmesh source",
        version=API_VERSION,
        description=f"Source ambassador for pipeline {pipeline!r}: lists work items for the manager.",
    )

    def count(endpoint: str) -> None:
        REQUESTS.labels(pipeline, endpoint).inc()

    seen: set[tuple[str, str]] = set()

    def count_skipped(skipped: list[dict[str, Any]]) -> None:
        for record in skipped:
            key = (str(record.get("record")), str(record.get("reason")))
            if key not in seen:
                if len(seen) < SEEN_CAP:
                    seen.add(key)
                SKIPPED.labels(pipeline, key[1]).inc()

    @app.get("/api/v1/items", summary="List items, one page at a time", dependencies=api,
             response_class=Response, responses=LIST_RESPONSES)
    def list_items(
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")] = DEFAULT_LIMIT,
        cursor: Annotated[str | None, Query(max_length=8192, description="`next` of the previous page")] = None,
    ) -> Response:
        """`skipped`: records in this page's range the source cannot serve (each reported by one page of a
        walk), `{"record", "reason", "detail"}`; everything else is listed."""
        count("list")
        try:
            items, next_cursor, skipped = backend.list_page(limit, cursor or None)
        except InvalidCursor as exc:
            raise HTTPException(400, str(exc)) from None
        skipped = list(skipped)
        body = _encode_page(items, skipped, next_cursor)  # may add to `skipped`
        count_skipped(skipped)
        return Response(body, media_type="application/json")

    @app.get("/api/v1/items/{name:path}", summary="One item by name", dependencies=api, response_model=Item,
             responses=GET_RESPONSES)
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

    @app.get("/healthz", summary="Liveness", response_model=Health)
    def healthz() -> dict[str, str]:
        count("healthz")
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses=METRICS_RESPONSES)
    def metrics() -> Response:
        count("metrics")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    log.debug("source app created", extra={"pipeline": pipeline, "backend": backend.type_name})
    return app
