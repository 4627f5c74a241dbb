"""The work item and its stream encoding: one field, `item`, holding compact JSON."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from . import strict_json

FIELD = b"item"
# Optional: the one consumer group (stage) an entry is for. A retry or a replayed dead letter goes back on a stream
# that other stages may read too; they acknowledge it unprocessed, so only the stage that failed it runs it again.
TO = b"to"
# The largest `item` field any consumer decodes (bytes): a bigger entry is dead-lettered unread, by the Python
# stages and the Lua router alike (services/router/route_lua.py gets it as a constant).
MAX_ITEM_BYTES = 4 * 1024 * 1024


class MalformedItem(ValueError):
    """An entry that does not decode to a WorkItem: it goes to the dead-letter stream, never into a crash loop."""


class WorkItem(BaseModel):
    id: str = Field(min_length=1, max_length=1024, description="Stable identity: the source's name for it.")
    data: dict[str, Any] = Field(default_factory=dict, description="The source item, or the previous result.")
    version: str | None = Field(default=None, description="Changes when the source content changes.")
    batch: str | None = None
    attempts: int = Field(default=0, ge=0, description="Failed deliveries so far (explicit failures).")
    error: str | None = Field(default=None, description="Why the last attempt failed.")

    @property
    def key(self) -> str:
        """A short name safe for files and Kubernetes objects, the same for every retry of this item."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        """A readable directory name for this item's outputs; the hash suffix appears only if the id had to be
        changed to be safe, so two ids can never share a directory."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.id)[:120].lstrip(".") or "item"
        return safe if safe == self.id else f"{safe}-{self.key[:8]}"

    def encode(self) -> dict[bytes, bytes]:
        return {FIELD: encode_json(self.model_dump(exclude_defaults=True))}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | None) -> WorkItem:
        if not fields or FIELD not in fields:
            raise MalformedItem("entry has no 'item' field")
        raw = fields[FIELD]
        if len(raw) > MAX_ITEM_BYTES:  # never parsed: a foreign writer's blob must not cost a worker its memory
            raise MalformedItem(f"item is larger than {MAX_ITEM_BYTES} bytes ({len(raw)} bytes)")
        if strict_json.suspect(raw):  # what we write is strict JSON: a NaN token here came from a foreign writer
            try:
                strict_json.loads(raw)
            except strict_json.StrictJSONError as exc:
                raise MalformedItem(f"item is not strict JSON: {exc}") from None
            except ValueError:
                pass  # not JSON at all: pydantic says where
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise MalformedItem(f"{where}: {first['msg']}") from None


def encode_json(value: Any) -> bytes:
    """Compact strict JSON (core.strict_json: a non-finite float becomes the string "NaN"/"Infinity"/...)."""
    return strict_json.encode(value)
