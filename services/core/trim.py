"""Trimming that never drops what a consumer group has not acknowledged.

The minimum over all groups of (smallest pending id, else last-delivered id) is computed and applied in one
script, so no entry can be delivered between the reading and the trimming. A stream without groups is left
alone: nobody has started reading it yet, so everything in it is still to be done."""

from __future__ import annotations

from redis import Redis

_SAFE_TRIM = """
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local keep = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    keep = redis.call('XPENDING', KEYS[1], info['name'])[2]
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
