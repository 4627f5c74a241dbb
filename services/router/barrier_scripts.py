"""The barriers' server-side steps. Each runs atomically, so a crash can never fold an item without acknowledging
it (or the reverse), nor fire or emit a batch twice."""

from __future__ import annotations

# KEYS: 1 input stream, 2 stage stats, 3 `in` set, 4 `agg` hash, 5 `held` hash, 6 `state` hash, 7 manifest,
#       8 batch items set, 9 scratch key, 10 output stream (for late items to hold: passed straight on),
#       11 the pipeline's arrivals hash, 12 the stage's dead-letter stream, 13 progress states, 14 progress
#       counts, 15 the pipeline's derived ids, 16 the batch's dead set of this stage, 17.. sets of ids that will
#       not come: dead-lettered upstream (or at the barrier itself), folded by a sibling (a sharded reducer's
#       sibling sees the other shards' items), or skipped: sent away from this barrier by a router before it (a
#       filter's drop; core.spec_skips)
# ARGV: 1 group, 2 expected ('' = the manifest's item set), 3 now, 4 seconds the batch's dead set is kept,
#       5 n = number of entry ids to acknowledge, 6..5+n entry ids, then per item (in the order of the entry
#       ids): id, raw item to hold ('' = none), deliveries, small ('1' = every amount is below 1e300 in
#       magnitude), m, then m (op, field, increment): op 'i' = an integer amount in decimal, of any size
#       (HINCRBY; beyond int64 exact decimal arithmetic here; HINCRBYFLOAT once the field holds a fraction),
#       'f' = a fraction (HINCRBYFLOAT).
# An item is folded (or held) only the first time its id arrives: a duplicate from a retry or a reclaim changes
# nothing. Its increments are all applied or none (services.router.reduce's numeric rule): one that would make a
# field leave the range of a double (1e308 + 1e308) undoes those of the item applied before it, and the item is
# dead-lettered here, in this call, with the reason (and marked dead: the DONE mark after this script leaves it
# so). Undoing needs the fields' values from before the item, which cost a read per increment; they are read only
# when an increment could fail: the item has an amount of 1e300 or more, or the batch's aggregate does (`state`
# field `huge`, set when a value reached that). Below that no sum of two can leave the range of a double (and an
# integer never fails: beyond int64 it goes on in decimal). Then the barrier fires when the manifest is complete
# and every item of it arrived, was dead-lettered upstream or was folded by a sibling. An item first arriving
# after the batch fired is late: folded all the same (once per id), counted in the batch's `state` (`late`) and
# the stage's stats (`late`, every batch).
# Returns {newly folded, fired (0/1), newly folded late, dead-lettered here}.
_STEP_HEAD = """
local stream, stats, seen, agg, held, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n = tonumber(ARGV[5])
if n > 0 then
  redis.call('XACK', stream, ARGV[1], unpack(ARGV, 6, 5 + n))
  redis.call('HINCRBY', stats, 'in', n)
end

"""
# the numeric rule: exact integers (decimal beyond int64), doubles that stay finite; `add` applies one increment
_NUMBERS = """
local function digits(s)  -- sign, magnitude without leading zeros
  local neg = string.sub(s, 1, 1) == '-'
  local m = string.gsub(neg and string.sub(s, 2) or s, '^0+', '')
  return neg, m
end
local function mag_add(x, y)
  local out, carry, i, j = {}, 0, #x, #y
  while i > 0 or j > 0 or carry > 0 do
    local d = carry + (i > 0 and string.byte(x, i) - 48 or 0) + (j > 0 and string.byte(y, j) - 48 or 0)
    out[#out + 1], carry = d % 10, math.floor(d / 10)
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end
local function mag_sub(x, y)  -- x >= y
  local out, borrow, i, j = {}, 0, #x, #y
  while i > 0 do
    local d = string.byte(x, i) - 48 - borrow - (j > 0 and string.byte(y, j) - 48 or 0)
    borrow = d < 0 and 1 or 0
    out[#out + 1] = d + 10 * borrow
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end
local function dec_add(a, b)  -- exact sum of two integers in decimal: for sums beyond int64
  local na, ma = digits(a)
  local nb, mb = digits(b)
  local neg, m
  if na == nb then
    neg, m = na, mag_add(ma, mb)
  elseif #ma > #mb or (#ma == #mb and ma >= mb) then
    neg, m = na, mag_sub(ma, mb)
  else
    neg, m = nb, mag_sub(mb, ma)
  end
  m = string.gsub(m, '^0+', '')
  if m == '' then return '0' end
  return (neg and '-' or '') .. m
end
local function finite(text)  -- what every reader holds: a double
  local x = tonumber(text)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end
local huge = redis.call('HEXISTS', state, 'huge') == 1
local function big(x)  -- from now on, increments of this batch may fail: they are checked
  if not huge and (x >= 1e300 or x <= -1e300) then
    huge = true
    redis.call('HSET', state, 'huge', 1)
  end
end
local function add(op, field, amount)  -- nil, or why it cannot be added (then it changed nothing)
  if op == 'i' and type(redis.pcall('HINCRBY', agg, field, amount)) ~= 'table' then return nil end
  local old = redis.call('HGET', agg, field)
  if op == 'i' and (old == false or string.find(old, '^-?%d+$')) then  -- beyond int64: exact in decimal
    local sum = dec_add(old or '0', amount)
    redis.call('HSET', agg, field, sum)
    if #sum > 300 then big(1e300) end
    return nil
  end
  local r = redis.pcall('HINCRBYFLOAT', agg, field, amount)  -- a fraction, or a field holding one
  if type(r) == 'table' then return r.err end
  if not finite(r) then
    if old then redis.call('HSET', agg, field, old) else redis.call('HDEL', agg, field) end
    return 'the sum leaves the range of a double'
  end
  big(tonumber(r))
  return nil
end

"""
_STEP_ITEMS = """
local fired = redis.call('HEXISTS', state, 'fired') == 1
local folded, dead, i, at = 0, 0, 6 + n, nil
local k = 0
while i <= #ARGV do
  local id, raw, deliveries, m = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 4])
  k = k + 1
  if redis.call('SADD', seen, id) == 1 then
    local first, why, failed = i + 5, nil, 0
    local checked = huge or ARGV[i + 3] ~= '1'  -- may an increment of this item fail?
    local before = {}  -- then the item's fields as they were (one increment undoes itself), an HMGET per 1000
    local last = checked and first + 3 * (m - 2) or 0  -- (unpack has a stack limit); the last is never undone
    for c = first, last, 3000 do
      local fields = {}
      for j = c, math.min(c + 2997, last), 3 do fields[#fields + 1] = ARGV[j + 1] end
      for _, v in ipairs(redis.call('HMGET', agg, unpack(fields))) do before[#before + 1] = v end
    end
    for j = first, first + 3 * (m - 1), 3 do  -- all of the item's increments, or none
      why = add(ARGV[j], ARGV[j + 1], ARGV[j + 2])
      if why then
        failed = (j - first) / 3 + 1
        why = string.gsub(ARGV[j + 1], '\\031', '.') .. ': ' .. why
        break
      end
    end
    if why and not checked then  -- impossible but for a foreign value in the hash: said, never hidden
      why = why .. ' (the aggregate hash holds a value batchmesh did not write: earlier increments of this item '
            .. 'stay applied)'
    elseif why then
      for u = failed - 1, 1, -1 do  -- back to what it was (a field written twice gets its first value last)
        local field, v = ARGV[first + 3 * (u - 1) + 1], before[u]
        if v then redis.call('HSET', agg, field, v) else redis.call('HDEL', agg, field) end
      end
    end
    if why then
      redis.call('SREM', seen, id)
      local entry = redis.call('XRANGE', stream, ARGV[5 + k], ARGV[5 + k])[1]
      local item = ''
      if entry then
        for f = 1, #entry[2], 2 do if entry[2][f] == 'item' then item = entry[2][f + 1] end end
      end
      if at == nil then
        local t = redis.call('TIME')
        at = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
      end
      redis.call('XADD', KEYS[12], '*', 'item', item, 'reason', 'reduce: ' .. why, 'stream', stream,
                 'deliveries', deliveries, 'at', at)
      redis.call('SADD', KEYS[16], id)
      redis.call('EXPIRE', KEYS[16], ARGV[4])
      local old = redis.call('HGET', KEYS[13], id)  -- dead, by core.progress's rule (done/dead stay so)
      if old ~= 'dead' and old ~= 'done' and (old or redis.call('SISMEMBER', KEYS[15], id) == 0) then
        redis.call('HSET', KEYS[13], id, 'dead')
        if old then redis.call('HINCRBY', KEYS[14], old, -1) end
        redis.call('HINCRBY', KEYS[14], 'dead', 1)
      end
      dead = dead + 1
    else
      folded = folded + 1
      if raw ~= '' then
        if fired then
          redis.call('XADD', KEYS[10], '*', 'item', raw)
          redis.call('HINCRBY', KEYS[11], KEYS[10], 1)
        else
          redis.call('HSET', held, id, raw)
        end
      end
      if fired then redis.call('HINCRBY', state, 'late', 1) end
    end
  end
  i = i + 5 + 3 * m
end
"""
# fire once the batch is complete (both scripts end so)
_FIRE = """
if folded > 0 then redis.call('HINCRBY', stats, 'out', folded) end
if dead > 0 then redis.call('HINCRBY', stats, 'dead', dead) end
if fired then
  if folded > 0 then redis.call('HINCRBY', stats, 'late', folded) end
  return {folded, 1, folded, dead}
end

local expected
if ARGV[2] ~= '' then
  expected = tonumber(ARGV[2])
else
  if redis.call('HGET', KEYS[7], 'complete') ~= '1' then return {folded, 0, 0, dead} end
  expected = redis.call('SCARD', KEYS[8])
end
local arrived = redis.call('SCARD', seen)
local resolved = arrived
if arrived < expected and #KEYS > 16 then
  local gone = 0
  for g = 17, #KEYS do gone = gone + redis.call('SCARD', KEYS[g]) end
  if arrived + gone >= expected then  -- only then is the exact count (a union) worth its cost
    resolved = redis.call('SUNIONSTORE', KEYS[9], seen, unpack(KEYS, 17))
    redis.call('DEL', KEYS[9])
  end
end
if resolved < expected then return {folded, 0, 0, dead} end
redis.call('HSET', state, 'fired', ARGV[3], 'expected', expected, 'arrived', arrived)
return {folded, 1, 0, dead}
"""
STEP = _STEP_HEAD + _NUMBERS + _STEP_ITEMS + _FIRE


# The fast path of STEP for a chunk of items whose increments are all integers below 1e299 in magnitude (summed
# here, in Python, per field: one HINCRBY per field of the chunk, not per item and field). Same KEYS as STEP.
# ARGV: 1-4 as STEP, 5 n, 6..5+n entry ids, then u = number of distinct item ids, the u ids (each once), then
#       m, then m (field, integer sum of the chunk's increments of it, in decimal).
# It changes nothing and returns {-1} unless the result is the one STEP would give item by item: no id of the chunk
# was folded before (a duplicate), the batch has not fired (late items), no aggregate reached 1e300 (`huge`: then
# increments are checked one by one) and no field holds a value batchmesh did not write; the caller then folds the
# chunk with STEP. Integer sums are exact in any order, so summing first changes no result. It also marks the
# items done (core.progress's rule, _SET_STATE in keep-terminal mode: done and dead stay so; a derived id is not
# counted), in the same call: the caller adds no progress mark. Returns as STEP.
FOLD_SUM = """
local stream, stats, seen, agg, held, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n = tonumber(ARGV[5])
local u = tonumber(ARGV[6 + n])
local first_id = 7 + n
local at = first_id + u
local m = tonumber(ARGV[at])
local function slice(from, count, step, offset)  -- ARGV[from + offset], ARGV[from + step + offset], ...: count
  local out = {}
  for j = from, from + step * (count - 1), step do out[#out + 1] = ARGV[j + offset] end
  return out
end
if redis.call('HEXISTS', state, 'huge') == 1 or redis.call('HEXISTS', state, 'fired') == 1 then return {-1} end
for c = 0, u - 1, 1000 do
  for _, member in ipairs(redis.call('SMISMEMBER', seen, unpack(slice(first_id + c, math.min(1000, u - c), 1, 0)))) do
    if member == 1 then return {-1} end
  end
end
-- Each field's new value where a double holds it exactly (the field absent, or an integer of at most 15
-- characters, plus a sum of at most 15: below 2**53), else false: `add` (the numeric rule; it cannot fail here).
local new = {}
for c = 0, m - 1, 1000 do
  local fields = slice(at + 1 + 2 * c, math.min(1000, m - c), 2, 0)
  for f, old in ipairs(redis.call('HMGET', agg, unpack(fields))) do
    local amount = ARGV[at + 2 * (c + f)]
    if not old then
      new[#new + 1] = amount
    elseif string.find(old, '^-?%d+$') then
      new[#new + 1] = #old <= 15 and #amount <= 15 and string.format('%d', tonumber(old) + tonumber(amount))
    else
      local x = tonumber(old)
      if x == nil or x ~= x or x == math.huge or x == -math.huge then return {-1} end  -- not batchmesh's value
      new[#new + 1] = false
    end
  end
end
if n > 0 then
  redis.call('XACK', stream, ARGV[1], unpack(ARGV, 6, 5 + n))
  redis.call('HINCRBY', stats, 'in', n)
end
""" + _NUMBERS + """
for c = 0, u - 1, 1000 do
  redis.call('SADD', seen, unpack(slice(first_id + c, math.min(1000, u - c), 1, 0)))
end
local sets = {}  -- one HSET per 1000 fields
for f = 1, m do
  if new[f] then
    sets[#sets + 1], sets[#sets + 2] = ARGV[at + 2 * f - 1], new[f]
    if #sets >= 2000 then
      redis.call('HSET', agg, unpack(sets))
      sets = {}
    end
  else
    add('i', ARGV[at + 2 * f - 1], ARGV[at + 2 * f])
  end
end
if #sets > 0 then redis.call('HSET', agg, unpack(sets)) end
local moved, done = {}, 0  -- progress: to done, by _SET_STATE's rule
for c = 0, u - 1, 1000 do
  local ids = slice(first_id + c, math.min(1000, u - c), 1, 0)
  local olds = redis.call('HMGET', KEYS[13], unpack(ids))
  local new = {}
  for k, id in ipairs(ids) do
    local old = olds[k]
    if old ~= 'done' and old ~= 'dead' then
      new[#new + 1] = k
    end
  end
  local fresh = {}
  for _, k in ipairs(new) do if not olds[k] then fresh[#fresh + 1] = ids[k] end end
  local derived = {}
  if #fresh > 0 then
    for f, member in ipairs(redis.call('SMISMEMBER', KEYS[15], unpack(fresh))) do derived[fresh[f]] = member == 1 end
  end
  local pairs_ = {}
  for _, k in ipairs(new) do
    local old, id = olds[k], ids[k]
    if old or not derived[id] then
      pairs_[#pairs_ + 1], pairs_[#pairs_ + 2] = id, 'done'
      if old then moved[old] = (moved[old] or 0) + 1 end
      done = done + 1
    end
  end
  if #pairs_ > 0 then redis.call('HSET', KEYS[13], unpack(pairs_)) end
end
for old, k in pairs(moved) do redis.call('HINCRBY', KEYS[14], old, -k) end
if done > 0 then redis.call('HINCRBY', KEYS[14], 'done', done) end
local folded, dead, fired = u, 0, false
""" + _FIRE

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
