"""A lighter decoding of a barrier's reads (services.router.barrier, under a backlog): the item document a reduce
folds, without building a WorkItem per entry.

Only entries that are plainly valid work items take this way: the `item` field at most MAX_ITEM_BYTES, no byte
that may start a non-strict number (core.strict_json.suspect's test), JSON that parses (pydantic_core's parser: the one
WorkItem.decode uses, so the values are the same: integers exact at any size), an object with only WorkItem's
fields, a non-empty string id of at most 1024 characters, an object `data` (or none), a non-empty string batch,
string-or-null version and error, a non-negative integer attempts. Anything else returns None and the caller
decodes that entry the usual way (core.batch_decode: WorkItem.decode's rules), so a malformed entry is dead-lettered
with exactly the reason it always gets."""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json

from services.core.item import FIELD, MAX_ITEM_BYTES
from services.core.strict_json import suspect

_FIELDS = frozenset(("id", "data", "version", "batch", "attempts", "error"))


def light_document(fields: dict[bytes, bytes]) -> tuple[dict[str, Any], int] | None:
    """(the document expressions see: {"id", "name", "data", "version", "batch"}, the item's attempts), or None:
    decode this entry the usual way."""
    raw = fields.get(FIELD)
    if type(raw) is not bytes or len(raw) > MAX_ITEM_BYTES or suspect(raw):
        return None
    try:
        doc = from_json(raw)
    except ValueError:
        return None
    if type(doc) is not dict or not doc.keys() <= _FIELDS:
        return None
    item_id, data, batch = doc.get("id"), doc.get("data", {}), doc.get("batch")
    version, attempts, error = doc.get("version"), doc.get("attempts", 0), doc.get("error")
    if (type(item_id) is not str or not 0 < len(item_id) <= 1024 or type(data) is not dict
            or type(batch) is not str or not batch or type(attempts) is not int or attempts < 0
            or not (version is None or type(version) is str) or not (error is None or type(error) is str)):
        return None
    return {"id": item_id, "name": item_id, "data": data, "version": version, "batch": batch}, attempts
