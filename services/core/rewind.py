"""A Redis that went back in time: restarted from an older append-only file (a truncated AOF, a restored copy, the
last second an `appendfsync everysec` machine crash lost) while the roles kept running.

What such a Redis holds is Redis as it was at an earlier moment, whole: a stage's commit is one MULTI/EXEC, which
the AOF logs whole (a transaction cut off at the file's end is dropped whole: `aof-load-truncated`), and so are the
manager's dispatch script and the barriers' scripts. Streams, consumer groups, pending entries, the done-set and
the aggregates agree with each other as of that moment. Redis has forgotten what happened after it, and that work
is done again (at-least-once processing); its outputs are published once, since their earlier publication was
forgotten with it. What runs outside Redis must not run ahead of it:

- A consumer still holding entries it read from the newer Redis must not commit them: the entry may be undelivered
  (or absent) in the older one and be delivered again, and its outputs would then be published twice. So a commit
  first checks that every entry it acknowledges is still pending under this consumer (`stale_acks`, in the round
  trip that already checks the keys' types) and is dropped whole otherwise (`StaleCommit`): the entries that are
  still ours stay pending and are reclaimed. The same check stops a commit of entries another consumer reclaimed.
- A group missing there (destroyed, or made after the copy) is re-created from the stream's oldest entry, and the
  entries whose item the done-set records as finished (state `done` or `dead`, with the version last dispatched),
  or that the stage's own output streams still hold (published by it, not yet trimmed by the next stage), are
  acknowledged on the spot instead of being handed out again (`create_group`, one script): de-duplication by item
  id and version. Left out: an item the stage published whose output the next stage already consumed and trimmed,
  and that is not yet finished further down — it runs again here, and the stages after deduplicate it (a
  barrier folds an id once, a sink's result is keyed by it). The other entries are handed out at once (pending
  and idle, so the stage's next reclaim takes them), so nothing is lost either.
- The manager lists again when Redis forgot that its last batch was closed (manager.reconcile_rewind)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis import Redis

from .keys import Keys

log = logging.getLogger(__name__)

RECONCILER = "bm-reconcile"  # the consumer name the re-creation script reads as
CHUNK = 1000  # entries per XREADGROUP inside the script
LIMIT = 200_000  # entries reconciled by one re-creation; the rest are delivered as usual (see create_group)

# KEYS: stream, states, versions, arrivals. ARGV: group, reconciler consumer name, chunk, limit, the group's own
# output stream key, the prefix of its named outputs ("<key>.").
# Returns {-1, 0, 0} if the group existed, else {skipped, handed, more (1 if entries past the limit are left)}.
# (The output streams are found in the arrivals hash, every stream ever added to: keys of one hash tag, one slot.)
_CREATE = """
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if not ok then
  local msg = type(err) == 'table' and err.err or tostring(err)
  if string.find(msg, 'BUSYGROUP', 1, true) then return {-1, 0, 0} end
  return redis.error_reply(msg)
end
local limit = tonumber(ARGV[4])
local function item_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'item' then
      local decoded, item = pcall(cjson.decode, fields[i + 1])
      if decoded and type(item) == 'table' and type(item.id) == 'string' then
        local version = item.version
        if version == nil or version == cjson.null then version = '' end
        return item.id, tostring(version)
      end
    end
  end
  return nil, nil
end
-- What this stage already published (its outputs not yet trimmed): id + version of every item in them.
local published, scanned = {}, 0
for _, out in ipairs(redis.call('HKEYS', KEYS[4])) do
  if out == ARGV[5] or string.sub(out, 1, #ARGV[6]) == ARGV[6] then
    local cursor = '-'
    while scanned < limit do
      local rows = redis.call('XRANGE', out, cursor, '+', 'COUNT', ARGV[3])
      if #rows == 0 then break end
      for _, e in ipairs(rows) do
        local id, version = item_of(e[2])
        if id then published[id .. '\0' .. version] = true end
      end
      scanned = scanned + #rows
      cursor = '(' .. rows[#rows][1]
    end
  end
end
local skipped, handed, seen = 0, 0, 0
while seen < limit do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
  if not r or not r[1] or #r[1][2] == 0 then return {skipped, handed, 0} end
  local done, todo = {}, {}
  for _, e in ipairs(r[1][2]) do
    seen = seen + 1
    local finished = false
    local id, version = item_of(e[2])
    if id then
      local state = redis.call('HGET', KEYS[2], id)
      if state == 'done' or state == 'dead' then
        local last = redis.call('HGET', KEYS[3], id)
        finished = (not last) or last == version
      end
      finished = finished or published[id .. '\0' .. version] == true
    end
    if finished then done[#done + 1] = e[1] else todo[#todo + 1] = e[1] end
  end
  if #done > 0 then
    redis.call('XACK', KEYS[1], ARGV[1], unpack(done))
    skipped = skipped + #done
  end
  for _, id in ipairs(todo) do  -- handed back: pending, idle for ever, no delivery counted: the next reclaim takes it
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', 100000000000, 'RETRYCOUNT', 0, 'JUSTID')
  end
  handed = handed + #todo
end
return {skipped, handed, 1}
"""


class StaleCommit(redis.ConnectionError):
    """A commit whose entries are no longer pending under this consumer (Redis restarted from an older state, or
    another consumer reclaimed them): nothing was written. A ConnectionError, so every role loop treats it as the
    connection loss it usually follows: the step is abandoned, what is still ours stays pending and is reclaimed."""


def create_group(client: Redis, keys: Keys, stream_key: str, group: str) -> tuple[int, int] | None:
    """Make `group` on `stream_key` (and the stream) unless it exists; None if it did. Otherwise the entries already
    in the stream are reconciled: (skipped: acknowledged because their item is finished (done or dead, at the
    version last dispatched) or this stage's outputs still hold it (same id and version: the stage did it and the
    next one has not trimmed it yet), handed: left pending for the next reclaim). Past LIMIT entries the rest is
    delivered as usual (a backlog that large was dispatched, not done: the done entries a trim has not yet removed
    are at the stream's head)."""
    own = keys.stream(group)
    skipped, handed, more = (int(v) for v in client.eval(
        _CREATE, 4, stream_key, keys.states(), keys.versions(), keys.arrivals(), group, RECONCILER, CHUNK, LIMIT,
        own, own + "."))
    if skipped < 0:
        return None
    if skipped or handed:
        log.warning("consumer group re-created; entries of finished items acknowledged, the rest handed out", extra={
            "event": "stage.regroup", "stream": stream_key, "group": group, "skipped": skipped, "handed": handed,
            "more": bool(more)})
    return skipped, handed


def stale_acks(replies: Sequence[Any], consumer: str) -> int:
    """How many XPENDING replies (one per acknowledged entry, see `pending_checks`) show an entry that is not
    pending under `consumer`."""
    stale = 0
    for rows in replies:
        owner = rows[0]["consumer"] if rows else None
        if (owner.decode() if isinstance(owner, bytes) else owner) != consumer:
            stale += 1
    return stale


def pending_checks(commands: Sequence[tuple[Sequence[Any], Any]]) -> list[tuple[Any, Any, Any]]:
    """(stream, group, entry id) of every entry the queued commands (a pipeline's command_stack) XACK."""
    out = []
    for args, _options in commands:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if name.upper() == "XACK" and len(args) > 3:
            out += [(args[1], args[2], entry_id) for entry_id in args[3:]]
    return out
