"""The sharder: each item to one of N shards by a stable hash of its key (`shard: {input, key, shards: N}`), to
<stage>.0 ... <stage>.<N-1>. The hash is SHA-1 (Python's hashlib and Lua's redis.sha1hex): the same key goes to
the same shard in every process, on both paths, after every restart. An item whose key is no key (null, a
float, an object: see core.spec_routers.route_key) is sharded by its id.

Spill: while a shard is unhealthy (see health.py) its new items go to a healthy shard chosen by another part of
the same hash, so one sick shard's load spreads evenly and deterministically over the others; they are counted
in `batchmesh_items_spilled_total{shard=<home>}` and the shard gets its items back once it heals. If no shard is
healthy, nothing spills (there is nowhere better to go)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from services.core.expressions import Expression, compile_expression, route_key
from services.core.spec_routers import ShardSpec

from .base import SHARD_HEALTHY, Document, Router, register
from .health import ShardHealth

log = logging.getLogger(__name__)


def shard_hash(key: str) -> tuple[int, int]:
    """(home part, spill part) of the key's hash; the script computes the very same from redis.sha1hex."""
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16), int(digest[8:16], 16)


def shard_of(key: str, shards: int) -> int:
    return shard_hash(key)[0] % shards


@register
class Sharder(Router):
    kind: ClassVar[str] = "shard"
    mode: ClassVar[str] = "shard"
    spec: ShardSpec

    def __init__(self, *args: Any, consumer_timeout_ms: int | None = None, health_interval_s: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health_check = ShardHealth(
            self.client, self.output_keys, max_backlog=self.spec.max_backlog,
            consumer_timeout_ms=consumer_timeout_ms or self.settings.visibility_timeout_ms,
            interval_s=health_interval_s)
        self.healthy: list[bool] = [True] * self.shards
        self._evaluated = False  # the first verdict is no change worth a log line

    def prepare(self, spec: ShardSpec) -> None:
        self.key = compile_expression(spec.key)
        self.shards = spec.shards

    def expression(self) -> Expression:
        return self.key

    def before_step(self) -> None:
        if not self.spec.spill:
            return
        before, self.healthy = self.healthy, list(self.health_check.refresh())
        for shard, (was, now) in enumerate(zip(before, self.healthy, strict=True)):
            SHARD_HEALTHY.labels(**self.labels, shard=str(shard)).set(int(now))
            if was != now and self._evaluated:
                log.warning("shard %s", "healed" if now else "unhealthy: spilling", extra={
                    "event": "shard.healed" if now else "shard.unhealthy", "stage": self.stage, "shard": shard})
        self._evaluated = True

    def decide(self, doc: Document) -> Sequence[int]:
        key = route_key(self.key.search(doc))
        home_part, spill_part = shard_hash(doc["id"] if key is None else key)  # no key: the id spreads them
        home = home_part % self.shards
        if self.healthy[home] or not self.spec.spill:
            return (home,)
        healthy = [i for i, ok in enumerate(self.healthy) if ok]
        if not healthy:
            return (home,)
        self._spilled[home] += 1
        return (healthy[spill_part % len(healthy)],)

    def lua_conf(self) -> dict[str, Any]:
        return {"health": "".join("1" if ok else "0" for ok in self.healthy) if self.spec.spill else ""}
