"""Finishing an item at a stage: hand the result on to the next stage, or, at a sink, record it and mark the
item done — inside the stage's commit, so the result, the ack and the progress change land together."""

from __future__ import annotations

from typing import Any

from redis import Redis

from . import strict_json
from .item import encode_json
from .keys import Keys
from .stage import Commit, Delivery, StreamConsumer


def finish(
    consumer: StreamConsumer, commit: Commit, delivery: Delivery, result: dict[str, Any], *, output: str | None
) -> None:
    """`output` is the stream to publish the result to (the stage's own), or None at a sink."""
    item = delivery.item
    assert item is not None, "malformed deliveries are dead-lettered, never finished"
    if output is not None:
        commit.complete(delivery, (output, item.model_copy(update={"data": result, "attempts": 0, "error": None})))
        return
    empty = type(result) is dict and not result  # a no-op's result, the hot path: nothing to encode
    commit.record(delivery, b"{}" if empty else encode_json(result))


def results(client: Redis, keys: Keys) -> dict[str, Any]:
    """Every recorded sink result, by item id."""
    return {k.decode(): strict_json.loads_foreign(v) for k, v in client.hscan_iter(keys.results(), count=1000)}
