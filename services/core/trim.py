"""Trimming that never drops what a consumer group has not acknowledged.

The minimum over all groups of (smallest pending id, else the id just after the last-delivered one) is computed
and applied in one script, so no entry can be delivered between the reading and the trimming. A stream without
groups is left alone: nobody has started reading it yet, so everything in it is still to be done. (So every
group must exist before entries arrive: a group created later would miss what the others trimmed.)"""

from __future__ import annotations

from redis import Redis

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
