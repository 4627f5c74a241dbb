"""A Redis that went back in time: restarted from an older append-only file (a truncated AOF, a restored copy, the
last second an `appendfsync everysec` machine crash lost) while the roles kept running.

What such a Redis holds is Redis as it was at an earlier moment, whole: a stage's commit is one MULTI/EXEC, which
the AOF logs whole (a transaction cut off at the file's end is dropped whole: `aof-load-truncated`), and so are the
manager's dispatch script and the barriers' scripts. Streams, consumer groups, pending entries, the done-set and
the aggregates agree with each other as of that moment. Redis has forgotten what happened after it, and that work
is done again (at-least-once processing); its outputs are published once, since their earlier publication was
forgotten with it. What runs outside Redis must not run ahead of it:

- A consumer still holding entries it read from the newer Redis must not commit them: the entry may be undelivered (or
  absent) in the older one and be delivered again, and its outputs would then be published twice. So a commit that
  publishes to another stage first checks that every entry it acknowledges is still pending under this consumer
  (`stale_acks`, in the round trip that already checks the keys' types) and is dropped whole otherwise
  (`StaleCommit`): the entries that are still ours stay pending and are reclaimed. The same check stops a commit of
  entries another consumer reclaimed.
- A group missing there (destroyed, or made after the copy) is re-created from the stream's oldest entry, and the
  entries whose item the done-set records as finished (state `done` or `dead`, with the version last dispatched),
  or that the stage's own output streams still hold (published by it, not yet trimmed by the next stage), are
  skipped instead of being handed out again (`create_group`, one script): de-duplication by item id and
  version. Left out: an item the stage published whose output the next stage already consumed and trimmed,
  and that is not yet finished further down — it runs again here, and the stages after deduplicate it (a
  barrier folds an id once, a sink's result is keyed by it). The other entries are delivered as usual, so
  nothing is lost either.
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
CHUNK = 1000  # entries per XRANGE inside the script
LIMIT = 200_000  # entries reconciled by one re-creation; the rest are delivered as usual (see create_group)
UNFINISHED_RUN = 10_000  # the scan stops this many unfinished entries past the last finished one

# KEYS: stream, states, versions, arrivals. ARGV: group, reconciler consumer name, chunk, limit, the group's own
# output stream key, the prefix of its named outputs ("<key>."), UNFINISHED_RUN.
# Returns {-1, 0, 0} if the group existed, else {skipped, handed, more (1 if entries past the limit are left)}.
# (The output streams are found in the arrivals hash, every stream ever added to: keys of one hash tag, one slot.)
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    for i = 1, #g, 2 do if g[i] == 'name' and g[i + 1] == ARGV[1] then return {-1, 0, 0} end end
  end
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
local function scan(key, visit)  -- XRANGE in chunks, at most `limit` entries; true if the whole stream was seen
  local cursor, seen = '-', 0
  while seen < limit do
    local rows = redis.call('XRANGE', key, cursor, '+', 'COUNT', ARGV[3])
    if #rows == 0 then return true end
    for _, e in ipairs(rows) do
      if visit(e) then return false end
    end
    seen = seen + #rows
    cursor = '(' .. rows[#rows][1]
  end
  return false
end
-- What this stage already published (its outputs not yet trimmed): id + version of every item in them.
local published = {}
for _, out in ipairs(redis.call('HKEYS', KEYS[4])) do
  if out == ARGV[5] or string.sub(out, 1, #ARGV[6]) == ARGV[6] then
    scan(out, function(e)
      local id, version = item_of(e[2])
      if id then published[id .. '\\0' .. version] = true end
    end)
  end
end
-- The input's entries, oldest first: finished = done or dead at the version last dispatched, or published here.
local finished, n, prefix, last, prefix_id = {}, 0, 0, 0, nil
local whole = scan(KEYS[1], function(e)
  n = n + 1
  local id, version = item_of(e[2])
  local done = false
  if id then
    local state = redis.call('HGET', KEYS[2], id)
    if state == 'done' or state == 'dead' then
      local dispatched = redis.call('HGET', KEYS[3], id)
      done = (not dispatched) or dispatched == version
    end
    done = done or published[id .. '\\0' .. version] == true
  end
  if done then
    finished[e[1]] = true
    last = n
    if prefix == n - 1 then prefix = n end
  end
  if n == prefix then prefix_id = e[1] end  -- the last id of the leading run of finished entries
  return n - last > tonumber(ARGV[7])  -- that far past the last finished entry: a backlog of work, stop looking
end)
-- The group starts after the leading finished entries (nothing delivered, nothing pending)...
if prefix > 0 then
  local made = false
  local info = redis.call('XINFO', 'STREAM', KEYS[1])  -- Redis 7 counts lag from entries read: say how many
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then
      made = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], prefix_id, 'ENTRIESREAD',
                   info[i + 1] - (redis.call('XLEN', KEYS[1]) - prefix))
    end
  end
  if not made then redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], prefix_id) end
else
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
-- ...and the finished entries after an unfinished one are read here and acknowledged; the unfinished ones among
-- them are handed back (pending, idle for ever, no delivery counted: the stage's next reclaim takes them).
local skipped, handed = prefix, 0
if last > prefix then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', last - prefix, 'STREAMS', KEYS[1], '>')
  local acks = {}
  for _, e in ipairs(r[1][2]) do
    if finished[e[1]] then
      acks[#acks + 1] = e[1]
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, e[1], 'IDLE', 100000000000, 'RETRYCOUNT', 0, 'JUSTID')
      handed = handed + 1
    end
  end
  if #acks > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(acks)) end
  skipped = skipped + #acks
  if handed == 0 then redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) end
end
return {skipped, handed, whole and 0 or 1}
"""


class StaleCommit(redis.ConnectionError):
    """A commit whose entries are no longer pending under this consumer (Redis restarted from an older state, or
    another consumer reclaimed them): nothing was written. A ConnectionError, so every role loop treats it as the
    connection loss it usually follows: the step is abandoned, what is still ours stays pending and is reclaimed."""


def create_group(client: Redis, keys: Keys, stream_key: str, group: str) -> tuple[int, int] | None:
    """Make `group` on `stream_key` (and the stream) unless it exists; None if it did. Otherwise the entries
    already in the stream are reconciled: an entry is finished when its item is done or dead at the version last
    dispatched, or when this stage's own output streams still hold it (same id and version: the stage did it and
    the next one has not trimmed it yet). The group starts after the leading run of finished entries; finished
    ones further on are read and acknowledged at once, the unfinished ones read with them handed back (pending,
    idle, no delivery counted) for the next reclaim. Returns (skipped, handed). A stream with no finished entry
    gets the group at 0 as always: nothing read, nothing pending. Past LIMIT entries the rest is delivered as
    usual (a backlog that large was dispatched, not done: a trim leaves the finished entries at the head)."""
    own = keys.stream(group)
    skipped, handed, more = (int(v) for v in client.eval(
        _CREATE, 4, stream_key, keys.states(), keys.versions(), keys.arrivals(), group, RECONCILER, CHUNK, LIMIT,
        own, own + ".", UNFINISHED_RUN))
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
    """(stream, group, entry id) of every entry the queued commands (a pipeline's command_stack) XACK, when they
    also publish to another stage's stream (an XADD to a `:s:` stream key they do not acknowledge): the outputs a
    stale commit would duplicate. A commit that only acknowledges, retries on its own input, dead-letters or
    stores a sink's result (keyed by item id) changes nothing twice, and is not checked."""
    acks: list[tuple[Any, Any, Any]] = []
    added: set[str] = set()
    for args, _options in commands:
        name = _text(args[0]).upper()
        if name == "XACK" and len(args) > 3:
            acks += [(args[1], args[2], entry_id) for entry_id in args[3:]]
        elif name == "XADD" and len(args) > 1:
            added.add(_text(args[1]))
    acked = {_text(stream) for stream, _, _ in acks}
    return acks if any(":s:" in key and key not in acked for key in added) else []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
