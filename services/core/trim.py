"""Trimming that never drops what a consumer group has not acknowledged.

The minimum over all groups of (smallest pending id, else the id just after the last-delivered one) is computed
and applied in one script, so no entry can be delivered between the reading and the trimming. A stream without
groups is left alone: nobody has started reading it yet, so everything in it is still to be done. (So every
group must exist before entries arrive: a group created later would miss what the others trimmed.)

Dead-letter streams have no consumer group: they are capped instead, by the policy of `DeadLetterCap`."""

from __future__ import annotations

import logging

from redis import Redis

from .keys import Keys

log = logging.getLogger(__name__)

_SAFE_TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function split(id)
  return string.match(id, '^(%d+)-(%d+)$')
end
-- Compare ids as decimal strings (no leading zeros): exact, where tonumber() rounds past 2^53.
local function lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if am ~= bm then return lt(am, bm) end
  return lt(as, bs)
end
-- The smallest id above `id`, so MINID drops `id` itself; for huge sequence numbers keep `id` (one extra entry).
local function after(id)
  local ms, seq = split(id)
  if #seq > 15 then return id end
  return ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local keep
  if tonumber(info['pending']) > 0 then
    keep = redis.call('XPENDING', KEYS[1], info['name'])[2]  -- oldest entry still pending in this group
  else
    keep = after(info['last-delivered-id'])  -- everything up to the last delivered entry is acknowledged
  end
  if floor == nil or less(keep, floor) then floor = keep end
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""


class SafeTrim:
    def __init__(self, client: Redis) -> None:
        self._script = client.register_script(_SAFE_TRIM)

    def __call__(self, stream_key: str) -> int:
        """Trim `stream_key` below every group's floor; returns how many entries were removed."""
        return int(self._script(keys=[stream_key]))


# The dead-letter cap (the policy is DeadLetterCap's docstring). KEYS: the dead-letter stream, the dropped-counts
# hash. ARGV: cap (entries), stage, most entries to drop in one call. Returns {dropped, total dropped so far}.
_CAP_DEAD = """
local cap = tonumber(ARGV[1])
if cap <= 0 or redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return {0, 0} end
if redis.call('XLEN', KEYS[1]) <= cap then return {0, 0} end
local dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', cap, 'LIMIT', tonumber(ARGV[3]))
if dropped == 0 then return {0, 0} end
return {dropped, redis.call('HINCRBY', KEYS[2], ARGV[2], dropped)}
"""
DEAD_LETTER_CAP = 100_000  # default entries kept per stage's dead-letter stream (Settings.dead_letter_maxlen)
CAP_LIMIT = 10_000  # entries dropped at most per call: a lowered cap is reached over a few seconds, no long stall


def dropped_key(keys: Keys) -> str:
    """Hash stage -> dead letters dropped by the cap so far. Not under `dlq:` (dead_letter_stages scans that)."""
    return f"{keys.prefix}:dlq-dropped"


class DeadLetterCap:
    """The dead-letter policy: each stage's dead-letter stream keeps its newest `cap` entries (approximately:
    `XTRIM MAXLEN ~ cap`, so only whole stream nodes go and trimming stays cheap; a stream may exceed `cap` by up
    to a node, 100 entries by Redis' default). Every dead letter dropped is counted, exactly (XTRIM's reply, in the
    same script), in the hash `dropped_key` under its stage, and the role that dropped it logs a warning
    (event `dlq.dropped`, with the count and the total). A dropped dead letter's item stays in state `dead` (the
    states hash and the counts keep it; `batchmesh status` counts it), and its batch's dead set still names it, so
    barriers do not wait for it; what goes is the stored copy of the item and its reason, so it can no longer be
    `dlq replay`ed (re-run it by changing its version at the source). `cap` 0 means no cap: dead letters are kept
    however many (memory then grows with them). Why a cap and not "never trim": Redis memory must stay bounded
    by work in flight (DESIGN.md), and a stage dead-lettering every item of a million-item batch would otherwise
    keep a million copies; 100,000 reasons are more than anyone reads, and the count says what is missing.

    Called by a stage consumer with its trimming (core.stage.maybe_trim, once a second): one short script that
    returns at once while the stream is under its cap."""

    def __init__(self, client: Redis, keys: Keys, stage: str, cap: int = DEAD_LETTER_CAP) -> None:
        self.keys, self.stage, self.cap = keys, stage, cap
        self._script = client.register_script(_CAP_DEAD)

    def __call__(self) -> int:
        """Apply the cap once; returns how many dead letters this call dropped (logged when any)."""
        if self.cap <= 0:
            return 0
        dropped, total = self._script(keys=[self.keys.dead_letters(self.stage), dropped_key(self.keys)],
                                      args=[self.cap, self.stage, CAP_LIMIT])
        if int(dropped):
            log.warning("dead letters dropped by the cap", extra={
                "event": "dlq.dropped", "stage": self.stage, "dropped": int(dropped), "total_dropped": int(total),
                "cap": self.cap})
        return int(dropped)


def dropped_dead_letters(client: Redis, keys: Keys) -> dict[str, int]:
    """Stage -> dead letters the cap has dropped so far (stages with none are absent)."""
    return {k.decode(): int(v) for k, v in client.hgetall(dropped_key(keys)).items()}
