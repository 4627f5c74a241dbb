"""Decoding a whole read of stream entries at once: one validation call for the batch instead of one per entry.

Same rules, same outcome per entry as `WorkItem.decode` (core.item), which stays the one definition: an entry
with no `item` field, one over MAX_ITEM_BYTES, or one whose bytes might hold a non-strict number (the test of
core.strict_json.suspect, made for the whole read at once by core.strict_json.suspects) is decoded alone by
`WorkItem.decode`; the rest are validated together as a list of JSON documents, each parsed on its own (never
joined into one text, so one entry's bytes can never combine with its neighbour's). If any of them fails, they
are all decoded again one by one, so a malformed entry gets exactly the reason `WorkItem.decode` gives. On a read
of plain entries this costs about a third of decoding them one by one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Json, TypeAdapter, ValidationError

from . import strict_json
from .item import FIELD, MAX_ITEM_BYTES, MalformedItem, WorkItem

if TYPE_CHECKING:
    from .stage import Delivery

_MANY: TypeAdapter[list[WorkItem]] = TypeAdapter(list[Json[WorkItem]])  # type: ignore[arg-type]


def decode_many(entries: list[dict[bytes, bytes] | None]) -> list[WorkItem | MalformedItem]:
    """Each entry's fields decoded to a WorkItem, or the MalformedItem saying why it is not one (in order)."""
    return decode_raws([fields.get(FIELD) if fields else None for fields in entries])


def decode_raws(raws: list[bytes | None]) -> list[WorkItem | MalformedItem]:
    """`decode_many` of entries given by their `item` field alone (None: the entry has none): in order."""
    out: list[WorkItem | MalformedItem | None] = [None] * len(raws)
    sized = [i for i, raw in enumerate(raws) if type(raw) is bytes and len(raw) <= MAX_ITEM_BYTES]
    suspect = strict_json.suspects([raws[i] for i in sized])  # type: ignore[misc]  # positions in `sized`
    plain = [i for k, i in enumerate(sized) if k not in suspect] if suspect else sized
    if len(plain) == len(raws):  # nothing to pick out
        try:
            return _MANY.validate_python(raws)  # type: ignore[arg-type]
        except ValidationError:
            return [_one(raw) for raw in raws]
    for i in set(range(len(raws))).difference(plain):
        out[i] = _one(raws[i])
    if plain:
        try:
            items = _MANY.validate_python([raws[i] for i in plain])
        except ValidationError:
            items = [_one(raws[i]) for i in plain]
        for i, item in zip(plain, items, strict=True):
            out[i] = item
    return out  # type: ignore[return-value]


def _one(raw: bytes | None) -> WorkItem | MalformedItem:
    try:
        return WorkItem.decode(None if raw is None else {FIELD: raw})
    except MalformedItem as exc:
        return exc


def deliveries(entries: list[tuple[bytes, dict[bytes, bytes]]], times: dict[bytes, int],
               default_times: int = 1) -> list[Delivery]:
    """Stream entries (id, fields) as a consumer's deliveries, decoded in one call; `times`: deliveries so far per
    entry id (`default_times` for the others). A malformed entry's delivery has no item and says why."""
    return _deliveries([e for e, _ in entries], [f.get(FIELD) if f else None for _, f in entries], times,
                       default_times)


def _deliveries(ids: list[bytes], raws: list[bytes | None], times: dict[bytes, int], default_times: int
                ) -> list[Delivery]:
    from .stage import Delivery

    batch = []
    for entry_id, raw, item in zip(ids, raws, decode_raws(raws), strict=True):
        n = times.get(entry_id, default_times) if times else default_times
        if type(item) is WorkItem:
            batch.append(Delivery(entry_id, item, item.attempts + n, raw))  # type: ignore[arg-type]
        else:
            batch.append(Delivery(entry_id, None, n, raw or b"", f"malformed item: {item}"))
    return batch
