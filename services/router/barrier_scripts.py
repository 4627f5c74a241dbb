"""The barriers' server-side steps. Each runs atomically, so a crash can never fold an item without acknowledging
it (or the reverse), nor fire or emit a batch twice."""

from __future__ import annotations

# KEYS: 1 input stream, 2 stage stats, 3 `in` set, 4 `agg` hash, 5 `held` hash, 6 `state` hash, 7 manifest,
#       8 batch items set, 9 scratch key, 10 output stream (for late items to hold: passed straight on),
#       11 the pipeline's arrivals hash, 12.. sets of ids that will not come: dead-lettered upstream (or at the
#       barrier itself), folded by a sibling (a sharded reducer's sibling sees the other shards' items), or
#       skipped: sent away from this barrier by a router before it (a filter's drop; core.spec_skips)
# ARGV: 1 group, 2 expected ('' = the manifest's item set), 3 now, 4 n = number of entry ids to acknowledge,
#       5..4+n entry ids, then per item: id, raw item to hold ('' = none), m, then m (op, field, increment),
#       op 'i' = an integer amount (HINCRBY, or HINCRBYFLOAT once the field holds a fraction), 'f' = a fraction.
# An item is folded (or held) only the first time its id arrives: a duplicate from a retry or a reclaim changes
# nothing. Then the barrier fires when the manifest is complete and every item of it arrived, was dead-lettered
# upstream or was folded by a sibling. An item first arriving after the batch fired is late: folded all the
# same (once per id), counted in the batch's `state` (`late`) and the stage's stats (`late`, every batch).
# Returns {newly folded, fired (0/1), newly folded late}.
STEP = """
local stream, stats, seen, agg, held, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n = tonumber(ARGV[4])
if n > 0 then
  redis.call('XACK', stream, ARGV[1], unpack(ARGV, 5, 4 + n))
  redis.call('HINCRBY', stats, 'in', n)
end
local fired = redis.call('HEXISTS', state, 'fired') == 1
local folded, i = 0, 5 + n
while i <= #ARGV do
  local id, raw, m = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if redis.call('SADD', seen, id) == 1 then
    folded = folded + 1
    if raw ~= '' then
      if fired then
        redis.call('XADD', KEYS[10], '*', 'item', raw)
        redis.call('HINCRBY', KEYS[11], KEYS[10], 1)
      else
        redis.call('HSET', held, id, raw)
      end
    end
    for j = i + 3, i + 2 + 3 * m, 3 do  -- integers add as integers (fast) until a field holds a fraction
      if ARGV[j] ~= 'i' or type(redis.pcall('HINCRBY', agg, ARGV[j + 1], ARGV[j + 2])) == 'table' then
        redis.call('HINCRBYFLOAT', agg, ARGV[j + 1], ARGV[j + 2])
      end
    end
    if fired then redis.call('HINCRBY', state, 'late', 1) end
  end
  i = i + 3 + 3 * m
end
if folded > 0 then redis.call('HINCRBY', stats, 'out', folded) end
if fired then
  if folded > 0 then redis.call('HINCRBY', stats, 'late', folded) end
  return {folded, 1, folded}
end

local expected
if ARGV[2] ~= '' then
  expected = tonumber(ARGV[2])
else
  if redis.call('HGET', KEYS[7], 'complete') ~= '1' then return {folded, 0, 0} end
  expected = redis.call('SCARD', KEYS[8])
end
local arrived = redis.call('SCARD', seen)
local resolved = arrived
if arrived < expected and #KEYS > 11 then
  local dead = 0
  for k = 12, #KEYS do dead = dead + redis.call('SCARD', KEYS[k]) end
  if arrived + dead >= expected then  -- only then is the exact count (a union) worth its cost
    resolved = redis.call('SUNIONSTORE', KEYS[9], seen, unpack(KEYS, 12))
    redis.call('DEL', KEYS[9])
  end
end
if resolved < expected then return {folded, 0, 0} end
redis.call('HSET', state, 'fired', ARGV[3], 'expected', expected, 'arrived', arrived)
return {folded, 1, 0}
"""

# KEYS: 1 `state` hash, 2 output stream (= KEYS[4] when nobody reads it), 3 `held` hash, 4 pipeline events
#       stream, 5 the pipeline's set of derived item ids, 6 the pipeline's arrivals hash, 7.. the batch's other
#       barrier keys (to expire).
# ARGV: 1 now, 2 what to put on the output: 'item' (ARGV[3]) | 'held' (every held item, then forget them),
#       3 the item, 4 the event, 5 how many events to keep, 6 the item's id (derived: progress ignores it),
#       7 seconds the batch's barrier state is kept after it emitted.
# Emits once: the `emitted` mark and the outputs land together. Returns 1 when it emitted now.
EMIT = """
if redis.call('HEXISTS', KEYS[1], 'fired') == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'emitted', ARGV[1]) == 0 then return 0 end
local out = KEYS[2]
if ARGV[2] == 'held' then
  local n = 0
  for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
    if out ~= KEYS[4] then
      redis.call('XADD', out, '*', 'item', raw)
      n = n + 1
    end
  end
  if n > 0 then redis.call('HINCRBY', KEYS[6], out, n) end
  redis.call('DEL', KEYS[3])
elseif out ~= KEYS[4] then
  redis.call('SADD', KEYS[5], ARGV[6])
  redis.call('XADD', out, '*', 'item', ARGV[3])
  redis.call('HINCRBY', KEYS[6], out, 1)
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[7])
for k = 7, #KEYS do redis.call('EXPIRE', KEYS[k], ARGV[7]) end
return 1
"""
