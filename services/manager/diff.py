"""The manager's diff: which listed items are work. An item is work when its name is unknown or its version
differs from the one last dispatched (a changed file is work again), unless it is still in flight (queued,
running, or failed and waiting for a retry): its change is picked up by a later poll, once it has settled.

Per page: one HMGET finds the candidates (no Python set of every name: memory stays bounded by a page; skipped
while pages come all new, as in a first pass), then one server-side script per 250 candidates re-checks each
and dispatches it, so two managers cannot both dispatch an item, and the version, the stream entry, the state
and the counts change together (atomic per call). A page's calls are pipelined on one connection
(manager.script_pipe): Redis runs call k while this process encodes the candidates of call k+1, and serves other
clients between calls. Only candidates are encoded (a prebuilt C JSON encoder, the model only for an item of an
unusual shape; an item neither can encode is counted invalid and logged): a re-poll of a known listing costs an
HMGET per page and no encoding."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis import Redis

from services.core import Keys, Progress, WorkItem
from services.core.item import FIELD

from .item_encode import MAX_ID
from .item_encode import fast_encode as _fast_encode
from .script_pipe import ScriptPipe

__all__ = ["MAX_ID", "DiffStats", "Dispatcher", "version_of", "_fast_encode"]

log = logging.getLogger(__name__)

# KEYS: versions, states, counts, stream, the batch's item set, arrivals hash. ARGV: the n names, then their n
# versions, then their n encoded items (names first: the HMGETs take them straight from ARGV, no table is built).
# The n names are distinct: the caller splits a chunk where a name repeats (`_send`), so the script keeps no
# table of what it sent. Returns {new, busy}.
# The state change is core.progress's (states hash + counts hash in step), inlined: a script cannot call one.
# Per call: one HMGET of the states of every candidate and one of the versions of those that have a state, one XADD
# per dispatched item, then one HSET of the versions, one SADD and one HSET of the states for all of them (a script
# is atomic: nobody sees the stream entries before the states). Only an item with a state can have a version: this
# script is the only writer of versions and writes the state in the same call, and nothing removes a state (core.
# progress moves it, a pipeline reset unlinks whole keys). So an item without a state is new, and a first pass
# (every item new) looks up the states alone.
# Instructions per item count here (Redis is the bound of a first pass): ARGV and redis.call are locals, one table
# of name/version pairs serves both HSETs (its values become 'queued' for the second), and when every candidate is
# dispatched the SADD takes the names straight from ARGV.
_DISPATCH = """
local argv, call = ARGV, redis.call
local n = #argv / 3
if n == 0 then return {0, 0} end
local states = call('HMGET', KEYS[2], unpack(argv, 1, n))
local versions, held, at = {}, {}, {}
for i = 1, n do
  if states[i] then at[#at + 1] = i; held[#at] = argv[i] end
end
if #at > 0 then
  local got = call('HMGET', KEYS[1], unpack(held))
  for j = 1, #at do versions[at[j]] = got[j] end
end
local new, busy, left, kv = 0, 0, {}, {}
local stream = KEYS[4]
for i = 1, n do
  local version = argv[n + i]
  if versions[i] ~= version then
    local old = states[i]
    if old == 'queued' or old == 'running' or old == 'failed' then
      busy = busy + 1
    else
      call('XADD', stream, '*', 'item', argv[2 * n + i])
      new = new + 1
      kv[2 * new - 1], kv[2 * new] = argv[i], version
      if old then left[old] = (left[old] or 0) + 1 end
    end
  end
end
if new > 0 then
  call('HSET', KEYS[1], unpack(kv))
  if new == n then
    call('SADD', KEYS[5], unpack(argv, 1, n))
  else
    local members = {}
    for j = 1, new do members[j] = kv[2 * j - 1] end
    call('SADD', KEYS[5], unpack(members))
  end
  for j = 2, 2 * new, 2 do kv[j] = 'queued' end
  call('HSET', KEYS[2], unpack(kv))
  for state, k in pairs(left) do call('HINCRBY', KEYS[3], state, -k) end
  call('HINCRBY', KEYS[3], 'queued', new)
  call('HINCRBY', KEYS[6], KEYS[4], new)
end
return {new, busy}
"""

# Candidates per script call. Short calls let Redis interleave other clients (a worker's reads and commits) between
# them, and let this process encode chunk k+1 while Redis runs chunk k: a page's calls are pipelined on one
# connection, so the first pass costs about max(Python, Redis) per item instead of their sum.
SCRIPT_CHUNK = 250
# A page's first calls are smaller: Redis idles while the first is encoded, and from then on it runs one call while
# the next is encoded. Each call is twice the one before (up to SCRIPT_CHUNK): Redis is the slower side on a first
# pass (~2x this process per item), so the next call is encoded before Redis has finished the one before.
FIRST_CHUNK = 16


@dataclass
class DiffStats:
    listed: int = 0
    new: int = 0
    known: int = 0
    busy: int = 0  # changed but still in flight (counted in `known`); dispatched by a later poll
    invalid: int = 0  # listed entries that are not valid items (no name, name too long, not encodable)

    def __iadd__(self, other: DiffStats) -> DiffStats:
        for name in ("listed", "new", "known", "busy", "invalid"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def version_of(item: dict[str, Any]) -> str:
    version = item.get("version")
    return "" if version is None else str(version)


def _send(pipe: ScriptPipe, names: list[str], versions: list[str], encoded: list[bytes]) -> None:
    """One dispatch call per run of distinct names (the script's rule): a name that repeats within a chunk starts a
    new call, which sees the earlier dispatch (`queued`) as a later HMGET would. Checked once per chunk (a C set)."""
    if len(set(names)) == len(names):
        pipe.send([*names, *versions, *encoded])
        return
    start, seen = 0, set()
    for i, name in enumerate(names):
        if name in seen:
            pipe.send([*names[start:i], *versions[start:i], *encoded[start:i]])
            start, seen = i, set()
        seen.add(name)
    pipe.send([*names[start:], *versions[start:], *encoded[start:]])


class Dispatcher:
    def __init__(self, client: Redis, keys: Keys, progress: Progress, *, batch: str) -> None:
        self.client = client
        self.keys = keys
        self.progress = progress  # its keys name the states and counts hashes the script keeps in step
        self.batch = batch  # the manager opens a new batch per listing pass: items carry it to the barriers
        # The last page was all new (a first pass): the next one most likely is too, so its HMGET pre-check is
        # skipped and every item goes to the script, which checks each anyway. A wrong guess costs one page's
        # encoding; the page after it is pre-checked again.
        self._all_new = False
        # A page's pipelined calls were re-run after a lost connection (manager.script_pipe): a call that had run
        # counted its items as known, so `new` is short; the manager then recounts the batch (batches.close).
        self.reran = False

    def dispatch(self, page: list[dict[str, Any]]) -> DiffStats:
        stats = DiffStats(listed=len(page))
        named = [(str(item["name"]), version_of(item), item) for item in page
                 if isinstance(item, dict) and item.get("name")]
        stats.invalid = len(page) - len(named)
        if not named:
            return stats
        seen: list[bytes | None] = ([None] * len(named) if self._all_new
                                    else self.client.hmget(self.keys.versions(), [name for name, _, _ in named]))
        keys = (self.keys.versions(), self.progress.keys.states(), self.progress.keys.counts(),
                self.keys.stream("source"), self.keys.batch_items(self.batch), self.keys.arrivals())
        names: list[str] = []
        versions: list[str] = []
        encoded: list[bytes] = []
        batch = self.batch
        chunk = FIRST_CHUNK
        with ScriptPipe(self.client, _DISPATCH, keys) as pipe:
            for (name, version, item), last in zip(named, seen, strict=True):
                if last is not None and last.decode() == version:
                    continue
                data = _fast_encode(name, version, item, batch)
                if data is None:  # not the common shape: the model decides (and says why an item is invalid)
                    try:
                        data = WorkItem(id=name, data=item, version=version or None, batch=batch).encode()[FIELD]
                    except ValueError as exc:  # a ValidationError, or text the model takes but UTF-8 cannot hold
                        stats.invalid += 1
                        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                        log.warning("listed item is not a valid work item", extra={
                            "event": "dispatch.invalid", "item": name[:200], "reason": reason[:300]})
                        continue
                names.append(name)
                versions.append(version)
                encoded.append(data)
                if len(names) == chunk:  # sent now: Redis runs it while the next chunk is encoded
                    _send(pipe, names, versions, encoded)
                    names, versions, encoded = [], [], []
                    chunk = min(2 * chunk, SCRIPT_CHUNK)
            if names:
                _send(pipe, names, versions, encoded)
            for new, busy in pipe.replies():
                stats.new += int(new)
                stats.busy += int(busy)
            self.reran |= pipe.lost
        stats.known = stats.listed - stats.invalid - stats.new
        self._all_new = stats.new == len(named) > 1
        return stats
