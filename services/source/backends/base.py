"""The source-backend plug-in point: one small base class, registered by name (like httpx transports)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

Item = dict[str, Any]
Page = tuple[list[Item], str | None]
# A record the backend passed over because it cannot serve it: {"record": printable name or "line N",
# "reason": "bad-name" | "malformed", "detail": why}. The listing page that covers it reports it (`skipped`).
Skipped = dict[str, Any]
FullPage = tuple[list[Item], str | None, list[Skipped]]


def skipped_record(record: str, reason: str, detail: str) -> Skipped:
    return {"record": record, "reason": reason, "detail": detail}


class InvalidCursor(ValueError):
    """A cursor this backend did not hand out (or cannot read any more): the API answers 400."""


class SourceBackend(ABC):
    """Lists work items a page at a time and looks one up by name.

    `list` returns items sorted in a stable order and an opaque cursor for the next page (None at the end).
    Pagination must stay correct while items are added: an item present for the whole walk is returned once.
    """

    type_name: str = ""

    @abstractmethod
    def list(self, limit: int, cursor: str | None = None) -> Page:
        """Up to `limit` items after `cursor`; raises InvalidCursor for a cursor it cannot read."""

    def list_page(self, limit: int, cursor: str | None = None) -> FullPage:
        """`list`, plus the records this page's range held that cannot be served (each reported by exactly one
        page of a walk). Backends that can meet such records override this one and derive `list` from it."""
        items, next_cursor = self.list(limit, cursor)
        return items, next_cursor, []

    @abstractmethod
    def get(self, name: str) -> Item | None:
        """The item called `name`, or None; raises names.InvalidName for an unsafe name."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing open
        """Release resources (files, connections)."""


B = TypeVar("B", bound=type[SourceBackend])
BACKENDS: dict[str, type[SourceBackend]] = {}


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: make a backend buildable by `name` (the pipeline spec's `source.type`)."""

    def decorate(cls: B) -> B:
        if name in BACKENDS and BACKENDS[name] is not cls:
            raise ValueError(f"source backend {name!r} is already registered by {BACKENDS[name].__qualname__}")
        cls.type_name = name
        BACKENDS[name] = cls
        return cls

    return decorate


def backend_class(name: str) -> type[SourceBackend]:
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS)) or "none"
        raise ValueError(f"unknown source backend {name!r}; known: {known}") from None
