"""A Redis that went back in time: restarted from an older append-only file (a truncated AOF, a restored copy, the
last second an `appendfsync everysec` machine crash lost) while the roles kept running.

What such a Redis holds is Redis as it was at an earlier moment, whole: a stage's commit is one MULTI/EXEC, which
the AOF logs whole (a transaction cut off at the file's end is dropped whole: `aof-load-truncated`), and so are the
manager's dispatch script and the barriers' scripts. Streams, consumer groups, pending entries, the done-set and
the aggregates agree with each other as of that moment. Redis has forgotten what happened after it, and that work
is done again (at-least-once processing); its outputs are published once, since their earlier publication was
forgotten with it. Two things live outside Redis and must not run ahead of it:

- A consumer still holding entries it read from the newer Redis must not commit them: the entry may be undelivered
  (or absent) in the older one and be delivered again, and its outputs would then be published twice. So a commit
  first checks that every entry it acknowledges is still pending under this consumer (`stale_acks`, in the round
  trip that already checks the keys' types) and is dropped whole otherwise (`StaleCommit`): the entries that are
  still ours stay pending and are reclaimed. The same check stops a commit of entries another consumer reclaimed.
- A group missing there (destroyed, or made after the copy) is re-created from the stream's oldest entry, and the
  entries whose item the done-set records as finished (state `done` or `dead`, with the version last dispatched)
  are acknowledged on the spot instead of being handed out again (`create_group`, one script): de-duplication by
  item id and version. The other entries are handed out at once (pending and idle, so the stage's next reclaim
  takes them), so nothing is lost either. The manager re-runs a listing pass whose batch Redis forgot."""

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

# KEYS: stream, states, versions. ARGV: group, reconciler consumer name, chunk, limit.
# Returns {-1, 0, 0} if the group existed, else {skipped, handed, more (1 if entries past the limit are left)}.
_CREATE = """
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if not ok then
  local msg = type(err) == 'table' and err.err or tostring(err)
  if string.find(msg, 'BUSYGROUP', 1, true) then return {-1, 0, 0} end
  return redis.error_reply(msg)
end
local skipped, handed, seen, limit = 0, 0, 0, tonumber(ARGV[4])
while seen < limit do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
  if not r or not r[1] or #r[1][2] == 0 then return {skipped, handed, 0} end
  local done, todo = {}, {}
  for _, e in ipairs(r[1][2]) do
    seen = seen + 1
    local raw, finished = nil, false
    local fields = e[2]
    for i = 1, #fields, 2 do if fields[i] == 'item' then raw = fields[i + 1] end end
    if raw then
      local decoded, item = pcall(cjson.decode, raw)
      if decoded and type(item) == 'table' and type(item.id) == 'string' then
        local state = redis.call('HGET', KEYS[2], item.id)
        if state == 'done' or state == 'dead' then
          local last = redis.call('HGET', KEYS[3], item.id)
          local version = item.version
          if version == nil or version == cjson.null then version = '' end
          finished = (not last) or last == tostring(version)
        end
      end
    end
    if finished then done[#done + 1] = e[1] else todo[#todo + 1] = e[1] end
  end
  if #done > 0 then
    redis.call('XACK', KEYS[1], ARGV[1], unpack(done))
    skipped = skipped + #done
  end
  if #todo > 0 then  -- handed back: pending, idle for ever, no delivery counted: the next reclaim takes them
    for _, id in ipairs(todo) do
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', 100000000000, 'RETRYCOUNT', 0, 'JUSTID')
    end
    handed = handed + #todo
  end
end
return {skipped, handed, 1}
"""


class StaleCommit(redis.ConnectionError):
    """A commit whose entries are no longer pending under this consumer (Redis restarted from an older state, or
    another consumer reclaimed them): nothing was written. A ConnectionError, so every role loop treats it as the
    connection loss it usually follows: the step is abandoned, what is still ours stays pending and is reclaimed."""


def create_group(client: Redis, keys: Keys, stream_key: str, group: str) -> tuple[int, int] | None:
    """Make `group` on `stream_key` (and the stream) unless it exists; None if it did. Otherwise the entries
    already in the stream are reconciled against the done-set: (skipped: acknowledged because their item is done,
    handed: left pending for the next reclaim). Past LIMIT entries the rest is delivered as usual (a backlog that
    large was dispatched, not done: the done entries a trim has not yet removed are at the stream's head)."""
    skipped, handed, more = (int(v) for v in client.eval(
        _CREATE, 3, stream_key, keys.states(), keys.versions(), group, RECONCILER, CHUNK, LIMIT))
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
