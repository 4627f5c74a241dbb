"""The item document routers decide on, and the one rule for what a router cannot route (shared by the Python
path here and the Lua script): the item must be a JSON object with a non-empty string id of at most 1024
characters and an object `data` (or none). Anything else about the item is for the stage that uses it to check:
routers pass the item on byte for byte."""

from __future__ import annotations

from typing import Any

from services.core import Delivery, strict_json
from services.core.item import MAX_ITEM_BYTES

Document = dict[str, Any]  # {"id", "name" (= id), "data", "version", "batch"}


def entry_id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def document(delivery: Delivery) -> tuple[Document | None, str]:
    """The document expressions see, or None and why the entry cannot be routed."""
    item = delivery.item
    if item is not None:
        return {"id": item.id, "name": item.id, "data": item.data, "version": item.version, "batch": item.batch}, ""
    if len(delivery.raw) > MAX_ITEM_BYTES:
        return None, f"item is larger than {MAX_ITEM_BYTES} bytes ({len(delivery.raw)} bytes)"
    try:  # core found it malformed as a work item; a router needs less (same rule as the Lua script)
        # strict UTF-8 first: json.loads(bytes) would let UTF-8-encoded surrogates through (surrogatepass)
        raw = strict_json.loads(delivery.raw.decode("utf-8")) if delivery.raw else None  # strict JSON only
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return None, "item is not a JSON object" if delivery.raw else "entry has no 'item' field"
    item_id, data = raw.get("id"), raw.get("data", {})
    if not isinstance(item_id, str) or not 0 < len(item_id) <= 1024:
        return None, "id: not a non-empty string of at most 1024 characters"
    if not isinstance(data, dict):
        return None, "data: not an object"
    return {"id": item_id, "name": item_id, "data": data, "version": raw.get("version"),
            "batch": raw.get("batch")}, ""
