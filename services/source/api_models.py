"""The documented shapes of Source API v1 (DESIGN.md "Source API v1"): what /openapi.json promises, so a client (or
schemathesis, tests/integration/test_source_fuzz.py) can check every response against it — errors included."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Item(BaseModel):
    """A work item: its `name` (identity, a safe relative path) plus whatever the backend knows. The directory
    backend adds size (bytes), mtime (seconds since the epoch), content_type, uri (file://) and version; a JSONL
    item is the line's own object."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="A relative POSIX path: no '.', '..' or empty segments, no "
                                                "backslash or control character, at most 1024 characters.")


class SkippedRecord(BaseModel):
    """A record in the page's range the source cannot serve (reported by exactly one page of a walk)."""

    record: str = Field(description="The record, printable: a file name (bytes that are not UTF-8 as \\xNN), or "
                                    "'line N' of a JSONL file.")
    reason: str = Field(description="bad-name: not a safe UTF-8 name; malformed: a bad JSONL line.")
    detail: str = Field(description="Why, in words.")


class ItemList(BaseModel):
    kind: Literal["ItemList"]
    apiVersion: Literal["v1"]  # noqa: N815 - the wire name
    items: list[Item]
    next: str | None = Field(description="The cursor of the next page; null on the last page.")
    skipped: list[SkippedRecord]


class Problem(BaseModel):
    """An error: what is wrong with the request, in words (an attacker-controlled name is never echoed)."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"]


def problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ItemList, "description": "One page of items"},
    400: problem("A cursor this source did not hand out (or can no longer read)"),
}
GET_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("A name that is not a safe relative path"),
    404: problem("No such item (or one the source does not serve, e.g. a symlink out of its root)"),
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}
