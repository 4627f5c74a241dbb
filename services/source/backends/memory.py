"""An in-memory backend: a stub for tests of the API, the filter and the manager (no disk involved)."""

from __future__ import annotations

from collections.abc import Iterable

from ..names import validate_name
from .base import InvalidCursor, Item, Page, SourceBackend, register_backend


@register_backend("memory")
class MemoryBackend(SourceBackend):
    """Items given as dicts with a unique `name`; the cursor is an index into the list sorted by name."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self._items = sorted((dict(it) for it in items), key=lambda it: it["name"])
        self._by_name = {it["name"]: it for it in self._items}

    def list(self, limit: int, cursor: str | None = None) -> Page:
        start = 0
        if cursor is not None:
            if not cursor.isdigit() or int(cursor) > len(self._items):
                raise InvalidCursor(f"bad cursor {cursor[:64]!r}: expected an index from a previous page")
            start = int(cursor)
        end = start + limit
        return [dict(it) for it in self._items[start:end]], (str(end) if end < len(self._items) else None)

    def get(self, name: str) -> Item | None:
        item = self._by_name.get(validate_name(name))
        return dict(item) if item is not None else None
