"""The manager's diff: which listed items are work. An item is work when its name is unknown or its version
differs from the one last dispatched (a changed file is work again), unless it is still in flight (queued,
running, or failed and waiting for a retry): its change is picked up by a later poll, once it has settled.

Per page: one HMGET finds the candidates (no Python set of every name: memory stays bounded by a page), then
one server-side script re-checks each candidate and dispatches it, so two managers cannot both dispatch an
item, and the version, the stream entry, the state and the counts change together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis import Redis

from services.core import Keys, Progress, WorkItem
from services.core.item import FIELD

log = logging.getLogger(__name__)

# KEYS: versions, states, counts, stream, the batch's item set, arrivals hash. ARGV: (name, version, encoded item)
# triples.
# Returns {new, busy}.
# The state change is core.progress's (states hash + counts hash in step), inlined: a script cannot call one.
_DISPATCH = """
local new, busy, left = 0, 0, {}
for i = 1, #ARGV, 3 do
  local name, version = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[1], name) ~= version then
    local old = redis.call('HGET', KEYS[2], name)
    if old == 'queued' or old == 'running' or old == 'failed' then
      busy = busy + 1
    else
      redis.call('XADD', KEYS[4], '*', 'item', ARGV[i + 2])
      redis.call('HSET', KEYS[1], name, version)
      redis.call('HSET', KEYS[2], name, 'queued')
      redis.call('SADD', KEYS[5], name)
      if old then left[old] = (left[old] or 0) + 1 end
      new = new + 1
    end
  end
end
for state, n in pairs(left) do redis.call('HINCRBY', KEYS[3], state, -n) end
if new > 0 then
  redis.call('HINCRBY', KEYS[3], 'queued', new)
  redis.call('HINCRBY', KEYS[6], KEYS[4], new)
end
return {new, busy}
"""

SCRIPT_CHUNK = 1000  # candidates per script call: keeps each call short, so Redis never stalls on a huge page


@dataclass
class DiffStats:
    listed: int = 0
    new: int = 0
    known: int = 0
    busy: int = 0  # changed but still in flight (counted in `known`); dispatched by a later poll
    invalid: int = 0  # listed entries that are not valid items (no name, name too long)

    def __iadd__(self, other: DiffStats) -> DiffStats:
        for name in ("listed", "new", "known", "busy", "invalid"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def version_of(item: dict[str, Any]) -> str:
    version = item.get("version")
    return "" if version is None else str(version)


class Dispatcher:
    def __init__(self, client: Redis, keys: Keys, progress: Progress, *, batch: str) -> None:
        self.client = client
        self.keys = keys
        self.progress = progress  # its keys name the states and counts hashes the script keeps in step
        self.batch = batch  # the manager opens a new batch per listing pass: items carry it to the barriers
        self._script = client.register_script(_DISPATCH)

    def dispatch(self, page: list[dict[str, Any]]) -> DiffStats:
        stats = DiffStats(listed=len(page))
        named = [(str(item["name"]), version_of(item), item) for item in page
                 if isinstance(item, dict) and item.get("name")]
        stats.invalid = len(page) - len(named)
        if not named:
            return stats
        seen = self.client.hmget(self.keys.versions(), [name for name, _, _ in named])
        args: list[str | bytes] = []
        for (name, version, item), last in zip(named, seen, strict=True):
            if last is not None and last.decode() == version:
                continue
            try:
                work = WorkItem(id=name, data=item, version=version or None, batch=self.batch)
            except ValidationError as exc:
                stats.invalid += 1
                log.warning("listed item is not a valid work item", extra={
                    "event": "dispatch.invalid", "item": name[:200], "reason": str(exc.errors()[0]["msg"])})
                continue
            args += [name, version, work.encode()[FIELD]]
        keys = [self.keys.versions(), self.progress.keys.states(), self.progress.keys.counts(),
                self.keys.stream("source"), self.keys.batch_items(self.batch), self.keys.arrivals()]
        step = 3 * SCRIPT_CHUNK
        for start in range(0, len(args), step):
            new, busy = self._script(keys=keys, args=args[start:start + step])
            stats.new += int(new)
            stats.busy += int(busy)
        stats.known = stats.listed - stats.invalid - stats.new
        return stats
