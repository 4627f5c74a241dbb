"""The Lua of the server-side router (scripts.RouteScript calls it; the module docstring there says what it
guarantees and why it reads with XRANGE and moves the group with XGROUP SETID).

Per call it checks the types of the keys it will write before its first write (an idle call writes nothing and
checks none; an input's type is XINFO's to check), compiles the decision program once into Lua closures, and per
entry validates the item (size, UTF-8, JSON object, id, data) and decides its outputs."""

from __future__ import annotations

from services.core.item import MAX_ITEM_BYTES

# KEYS: inputs (nin), outputs, dead-letter stream, stage stats, progress states, progress counts, arrivals hash.
# ARGV: group, count per input, nin, mode (all|filter|split|shard), program (JSON or ''),
#       drop state ('' = leave), conf JSON ({"routes": {value: output}, "default": output} | {"health": "1011"},
#       and "skips": [[key head, key tail, mask]], "ttl": seconds when the router tells barriers what it sends away
#       from them: an item of batch B whose outputs are all '1' in a mask is added to the set head..B..tail, a
#       barrier's `skipped` set. Those keys are named by the items' batches, so they are not in KEYS: every key of
#       a pipeline carries its hash tag, so they are in the same Cluster slot as KEYS).
# Returns {read, completed, filtered, dead, skipped, {spilled per shard}, {the group's last-delivered id per input},
#          microseconds the call took (by the server's clock)}.
ROUTE_LUA = r"""
local rcall, sbyte, sfind, ssub, type, pcall = redis.call, string.byte, string.find, string.sub, type, pcall
local decode = cjson.decode  -- (locals: a global is a table lookup at every use, two for string.byte)
local t0 = rcall('TIME')  -- how long this call held Redis goes back to the caller (the next batch's size)
local function elapsed_us()
  local t = redis.call('TIME')
  return (tonumber(t[1]) - tonumber(t0[1])) * 1000000 + tonumber(t[2]) - tonumber(t0[2])
end
local group, count, nin = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mode, drop_state = ARGV[4], ARGV[6]
local nout = #KEYS - nin - 5
local tail = nin + nout
local dlq, stats, states, counts = KEYS[tail + 1], KEYS[tail + 2], KEYS[tail + 3], KEYS[tail + 4]
local arrivals, added, okeys = KEYS[#KEYS], {}, {}
for t = 1, nout do okeys[t], added[t] = KEYS[nin + t], 0 end
local function wrong(key, want)  -- nil, or the error to return: checked before the first write, for the keys
  local t = redis.call('TYPE', key)['ok']  -- this call writes (an idle call checks none; an input's type is
  if t ~= want and t ~= 'none' then  -- XINFO's to check)
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a ' .. want ..
                             ': nothing was routed')
  end
end
local prog = ARGV[5] ~= '' and cjson.decode(ARGV[5]) or nil
local conf = cjson.decode(ARGV[7])
local NULL = cjson.null

local function truthy(v)
  if v == true then return true end  -- a comparison's result, the common case
  if v == nil or v == NULL or v == false or v == '' then return false end
  if type(v) == 'table' then return next(v) ~= nil end
  return true
end

local function key_of(v)
  local t = type(v)
  if t == 'string' then return v end
  if t == 'boolean' then return v and 'true' or 'false' end
  if t == 'number' and v == math.floor(v) and math.abs(v) < 9007199254740992 then
    if v == 0 then return '0' end  -- not '-0'
    return string.format('%.0f', v)
  end
  return nil
end

local EMPTY = {}  -- a missing data is {}; shared, never written
local function path(doc, segs)
  local first, cur = segs[1], nil
  if first == 'name' then cur = doc.id elseif first == 'data' then cur = doc.data or EMPTY else cur = doc[first] end
  for i = 2, #segs do
    if type(cur) ~= 'table' then return NULL end
    cur = cur[segs[i]]
  end
  if cur == nil then return NULL end
  return cur
end

local function same(a, b)  -- one side is always a scalar literal (see core.spec_routers)
  return type(a) == type(b) and type(a) ~= 'table' and a == b
end

-- The program ({p = path} | {v = literal} | {op, a, b}, core.expressions) compiled once per call into closures:
-- no tree walk and op dispatch per entry. The rules are core.expressions' (truthy, same, numbers only compare
-- with numbers, else null); a two-segment data path and a comparison with a scalar literal (one side always is,
-- see core.spec_routers) get their own closures.
local function compile(n)
  if n.p then
    local segs = n.p
    if segs[1] == 'data' and #segs == 2 then
      local s2 = segs[2]
      return function(doc)  -- data is nil or an object here (document)
        local d = doc.data
        if d == nil then return NULL end
        local v = d[s2]
        if v == nil then return NULL end
        return v
      end
    end
    return function(doc) return path(doc, segs) end
  end
  if n.v ~= nil then
    local v = n.v
    return function() return v end
  end
  local op = n.op
  local a = compile(n.a)
  if op == 'not' then return function(doc) return not truthy(a(doc)) end end
  local b = compile(n.b)
  if op == 'and' then return function(doc) local x = a(doc); if not truthy(x) then return x end; return b(doc) end end
  if op == 'or' then return function(doc) local x = a(doc); if truthy(x) then return x end; return b(doc) end end
  if op == 'eq' or op == 'ne' then
    local lit, other = n.b.v, a  -- same() with a scalar literal is ==: Lua's == is false across types
    if lit == nil then lit, other = n.a.v, b end
    if lit ~= nil and type(lit) ~= 'table' then
      if op == 'eq' then return function(doc) return other(doc) == lit end end
      return function(doc) return other(doc) ~= lit end
    end
    if op == 'eq' then return function(doc) return same(a(doc), b(doc)) end end
    return function(doc) return not same(a(doc), b(doc)) end
  end
  return function(doc)
    local x, y = a(doc), b(doc)
    if type(x) ~= 'number' or type(y) ~= 'number' then return NULL end
    if op == 'lt' then return x < y elseif op == 'lte' then return x <= y
    elseif op == 'gt' then return x > y else return x >= y end
  end
end

-- The item document, or nil and why: a JSON object, a non-empty string id of at most 1024 characters, and an
-- object (or no) data. cjson decodes [] and {} alike, so an empty data table is checked in the raw text.
local function valid_utf8(s, i)  -- from byte i (the first >= 0x80): cjson passes any byte through, so refuse
  local n = #s                   -- what Python's decoder refuses
  while i do
    local c, len = sbyte(s, i), 0
    if c >= 0xC2 and c <= 0xDF then len = 1 elseif c >= 0xE0 and c <= 0xEF then len = 2
    elseif c >= 0xF0 and c <= 0xF4 then len = 3 else return false end
    if i + len > n then return false end
    for j = 1, len do
      local cc = sbyte(s, i + j)
      if cc < 0x80 or cc > 0xBF then return false end
    end
    local c1 = sbyte(s, i + 1)  -- overlong forms, surrogates, beyond U+10FFFF
    if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F) or (c == 0xF0 and c1 < 0x90)
        or (c == 0xF4 and c1 > 0x8F) then return false end
    i = sfind(s, '[\128-\255]', i + len + 1)  -- skip the ASCII run
  end
  return true
end

local function document(raw)
  if raw == nil then return nil, "entry has no 'item' field" end
  local n = #raw
  if n > MAX_ITEM_BYTES then
    return nil, 'item is larger than MAX_ITEM_BYTES bytes (' .. n .. ' bytes)'
  end
  -- The ASCII prefix in one anchored match (no '$': nothing to backtrack); almost every item is all of it.
  -- Faster than math.max over string.byte, which pushes every byte as a Lua number (a 68-byte item: 420 -> 277
  -- ns on 6.2, 406 -> 372 ns on 7.0; perf-routers3).
  local _, ascii_to = sfind(raw, '^[^\128-\255]*')
  if ascii_to < n and not valid_utf8(raw, ascii_to + 1) then return nil, 'item is not a JSON object' end
  local ok, doc = pcall(decode, raw)
  if not ok or type(doc) ~= 'table' then return nil, 'item is not a JSON object' end
  local id = doc.id
  if type(id) ~= 'string' or id == '' then return nil, 'id: not a non-empty string' end
  if #id > 1024 and select(2, string.gsub(id, '[^\128-\191]', '')) > 1024 then return nil, 'id: too long' end
  local data = doc.data
  if data ~= nil and (type(data) ~= 'table' or data[1] ~= nil
      or (next(data) == nil and string.find(raw, '[^\\]"data"%s*:%s*%['))) then
    return nil, 'data: not an object'
  end
  return doc  -- absent fields read as null (see path)
end

local health, healthy, nshards = conf.health or '', {}, nout
if mode == 'shard' then
  for i = 1, nshards do if string.sub(health, i, i) == '1' then healthy[#healthy + 1] = i end end
end
local spilled, every, single, none = {}, {}, {}, {}  -- target lists are shared and never written
for i = 1, nshards do spilled[i] = 0 end
for i = 1, nout do every[i] = i; single[i] = {i} end
local home_of, spill_of = {}, {}  -- a key's home and hash: a batch's repeated keys hash once

local expr = prog and compile(prog)
local routes, default = conf.routes, conf.default
local decide  -- doc -> output indexes (1-based); empty = dropped
if mode == 'all' then
  decide = function() return every end
elseif mode == 'filter' then
  decide = function(doc)
    if truthy(expr(doc)) then return single[1] end
    return none
  end
elseif mode == 'split' then
  decide = function(doc)
    local k = key_of(expr(doc))
    return single[(k and routes[k]) or default]
  end
else
local sha1hex, nhealthy, sick = redis.sha1hex, #healthy, {}
for i = 1, nshards do sick[i] = nhealthy > 0 and ssub(health, i, i) ~= '1' end
decide = function(doc)
  local k = key_of(expr(doc)) or doc.id
  local home = home_of[k]
  if home == nil then
    local h = sha1hex(k)
    home = tonumber(ssub(h, 1, 8), 16) % nshards + 1
    home_of[k], spill_of[k] = home, h
  end
  if sick[home] then  -- the spill part only when it spills
    spilled[home] = spilled[home] + 1
    return single[healthy[tonumber(ssub(spill_of[k], 9, 16), 16) % nhealthy + 1]]
  end
  return single[home]
end
end

local batches, total, from = {}, 0, {}
for i = 1, nin do
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
    local name, last = nil, nil
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
    end
    if name == group then from[i] = last end
  end
  if from[i] == nil then return redis.error_reply('NOGROUP no group ' .. group .. ' on ' .. KEYS[i]) end
end
for i = 1, nin do
  batches[i] = redis.call('XRANGE', KEYS[i], '(' .. from[i], '+', 'COUNT', count)
  total = total + #batches[i]
end
if total == 0 then  -- idle: the caller waits for entries newer than what the group has seen
  return {0, 0, 0, 0, 0, spilled, from, elapsed_us()}
end
local seen = {}
for i = 1, nin do seen[i] = #batches[i] > 0 and batches[i][#batches[i]][1] or from[i] end

local read, completed, filtered, dead, skipped = 0, 0, 0, 0, 0
-- First every decision, writing nothing: a skipped set an item is recorded in is named by the item's batch, so
-- its type is checked here, before the first write (see the module's docstring).
local skips, away, away_keys = conf.skips or {}, {}, {}
local nskips = #skips
local a_raw, a_to = {}, {}  -- per routed entry: the item, its target list (false: dead)
local d_in, d_why, d_id = {}, {}, {}  -- sparse, by entry: a dead one's input and reason, a dropped one's id
local hits = {}  -- target list -> entries sent to it (the arrivals per output, counted per list, not per entry)
for i = 1, nin do
  local b = batches[i]
  for e = 1, #b do
    local f, raw, to = b[e][2], nil, nil
    if f[1] == 'item' and f[3] == nil then raw = f[2] else  -- the common entry: just the item
      for j = 1, #f, 2 do
        if f[j] == 'item' then raw = f[j + 1] elseif f[j] == 'to' then to = f[j + 1] end
      end
    end
    if to ~= nil and to ~= group then
      skipped = skipped + 1  -- a retry or replay addressed to another reader of this stream
    else
      read = read + 1
      local doc, why = document(raw)
      a_raw[read] = raw
      if not doc then
        dead = dead + 1
        a_to[read], d_in[read], d_why[read] = false, i, why
      else
        local targets = decide(doc)
        a_to[read] = targets
        if targets[1] then
          completed = completed + 1
          hits[targets] = (hits[targets] or 0) + 1
        else
          filtered = filtered + 1
          d_id[read] = doc.id
        end
        local batch = nskips > 0 and doc.batch
        if batch and type(batch) == 'string' and batch ~= '' then
          for _, s in ipairs(skips) do  -- {key head, key tail, '1' per output leading away from that barrier}
            local gone = true
            for _, t in ipairs(targets) do
              if ssub(s[3], t, t) ~= '1' then gone = false; break end
            end
            if gone then
              local key = s[1] .. batch .. s[2]
              local ids = away[key]
              if ids == nil then
                local t = rcall('TYPE', key)['ok']
                if t ~= 'set' and t ~= 'none' then
                  return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a set: nothing ' ..
                                           'was routed')
                end
                ids = {}
                away[key] = ids
                away_keys[#away_keys + 1] = key
              end
              ids[#ids + 1] = doc.id
            end
          end
        end
      end
    end
  end
end
for targets, n in pairs(hits) do
  for j = 1, #targets do local t = targets[j]; added[t] = added[t] + n end
end
local err = nil  -- the keys this call writes, before the first write
for t = 1, nout do if added[t] > 0 then err = err or wrong(okeys[t], 'stream') end end
if dead > 0 then err = err or wrong(dlq, 'stream') end
if read > 0 then err = err or wrong(stats, 'hash') end
if completed > 0 then err = err or wrong(arrivals, 'hash') end
if filtered > 0 and drop_state ~= '' then err = err or wrong(states, 'hash') or wrong(counts, 'hash') end
if err then return err end
local at = nil
for n = 1, read do
  local targets, raw = a_to[n], a_raw[n]
  if not targets then
    if at == nil then
      local t = rcall('TIME')
      at = t[1] .. '.' .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
    end
    rcall('XADD', dlq, '*', 'item', raw or '', 'reason', 'malformed item: ' .. d_why[n],
          'stream', KEYS[d_in[n]], 'deliveries', '1', 'at', at)
  elseif targets[2] then
    for j = 1, #targets do rcall('XADD', okeys[targets[j]], '*', 'item', raw) end
  elseif targets[1] then
    rcall('XADD', okeys[targets[1]], '*', 'item', raw)
  elseif drop_state ~= '' then  -- dropped: the same rule as core.progress: done/dead stay so
    local id = d_id[n]
    local old = rcall('HGET', states, id)
    if old ~= drop_state and old ~= 'done' and old ~= 'dead' then
      rcall('HSET', states, id, drop_state)
      if old then rcall('HINCRBY', counts, old, -1) end
      rcall('HINCRBY', counts, drop_state, 1)
    end
  end
end
for i = 1, nin do
  if #batches[i] > 0 then  -- the group has now seen them: delivered and acknowledged in one
    redis.call('XGROUP', 'SETID', KEYS[i], group, batches[i][#batches[i]][1])
  end
end
for _, key in ipairs(away_keys) do  -- in the call that routes them: a barrier counts them as accounted for
  local ids = away[key]
  for j = 1, #ids, 1000 do redis.call('SADD', key, unpack(ids, j, math.min(j + 999, #ids))) end
  redis.call('EXPIRE', key, conf.ttl)
end
local nspilled = 0
for i = 1, nshards do nspilled = nspilled + spilled[i] end
for t = 1, nout do if added[t] > 0 then redis.call('HINCRBY', arrivals, okeys[t], added[t]) end end
for name, n in pairs({out = completed, dead = dead, filtered = filtered, spilled = nspilled}) do
  if n > 0 then redis.call('HINCRBY', stats, name, n) end
end
return {read, completed, filtered, dead, skipped, spilled, seen, elapsed_us()}
""".replace("MAX_ITEM_BYTES", str(MAX_ITEM_BYTES))  # the one cap (core.item)
