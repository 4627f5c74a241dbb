"""Walk the source ambassador's listing (API v1, cursor pagination) one page at a time, so memory stays bounded
by a page whatever the size of the listing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class SourceError(RuntimeError):
    """The source answered, but not with a v1 ItemList (or not with 200)."""


def list_source(
    source_url: str, page_size: int = 1000, *, client: httpx.Client | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the listing page by page, with `client` (the manager keeps one) or a client made for this listing.
    The records the source reports it skipped (`skipped` of each page) are appended to `skipped`, if given."""
    url = source_url.rstrip("/") + "/api/v1/items"
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT)
    try:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            response = http.get(url, params=params)
            if response.status_code != 200:
                raise SourceError(f"GET {response.url} -> {response.status_code}: {response.text[:300]}")
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or body.get("kind") != "ItemList" or body.get("apiVersion") != "v1":
                raise SourceError(f"GET {response.url}: not a v1 ItemList")
            if skipped is not None:
                skipped.extend(r for r in body.get("skipped") or [] if isinstance(r, dict))
            yield list(body.get("items") or [])
            cursor = body.get("next")
            if not cursor:
                return
    finally:
        if own:
            http.close()
