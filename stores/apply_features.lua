-- Apply one aggregated batch of feature updates (built by stores/features.py), together with
-- the consumer's applied offsets, as ONE atomic step. Doing the per-key work here instead of
-- one Python command per key is what makes ingest fast: Python sends one payload, Redis runs
-- the loops in C/Lua.
--
-- Redis rolls back neither scripts nor MULTI/EXEC, so the script runs in two phases:
--   1. check: every key it will touch must be absent or of the type it expects. If one is not,
--      it returns {'wrong', key, type, key, type, ...} having written NOTHING, and the caller
--      dead-letters the events behind those keys and applies the rest.
--   2. write: only commands that cannot fail on keys of the right type (HMGET/HSET with
--      numbers computed here, ZADD, SADD, ZINCRBY, SET), and the offsets last.
--
-- ARGV[1]  JSON payload:
--   meta     {item: {title=..., genres="a|b", year=...}}     catalog upserts (applied first)
--   users    [[user, {field: n}, rating_sum, last_ts, [[item, ts]...], [[item, affinity]...]]]
--   items    [[item, {field: n}, rating_sum]]
--   pop      {item: decayed increment}
--   variants {"model|variant|field": n}
--   ids      [event id, ...] applied by this batch, for de-duplication
--   offsets  [[offset key, offset as a string], ...]: only ever moved forward
--   rebase   factor to multiply every popularity score by before adding, or false
--   landmark the new popularity landmark (a string), or false
-- ARGV[2]  cap of the recent-items sorted set per user
-- ARGV[3]  now, in ms (the users' updated_ms)
-- ARGV[4]  key prefix ("sr")
-- ARGV[5]  the de-duplication set of the current time bucket
-- ARGV[6]  its time to live, in seconds
--
-- Keys are derived from ids exactly as stores/features.py builds them: a type marker, then the
-- id inside braces (`sr:u:{alice}`, `sr:seq:{alice}`, `sr:seen:{alice}`, `sr:seenlog:{alice}`,
-- `sr:i:{m1}`, `sr:pend:{m1}`), so no id can name another key, and a user's keys share a Redis
-- Cluster slot.
--
-- The seen set and the seen log hold the same items: an item is appended to the log when it
-- joins the set, so a reader that holds the log's first n entries reads only what came after
-- (the vectors group's incremental read, trainer/candidates.py).
--
-- Genre affinity does not depend on whether an item's catalog event came before or after its
-- ratings (topics are fetched apart): a rating or click of an item the catalog has not named
-- yet is kept in `sr:pend:{item}` (user -> weight) and credited when the item arrives.
local p = cjson.decode(ARGV[1])
local cap = tonumber(ARGV[2])
local now_ms = ARGV[3]
local pre = ARGV[4]
local popularity = pre .. ':popularity'
local landmark = pre .. ':popularity:landmark'
local variants = pre .. ':variants'

local function user_hash(id) return pre .. ':u:{' .. id .. '}' end
local function user_seq(id) return pre .. ':seq:{' .. id .. '}' end
local function user_seen(id) return pre .. ':seen:{' .. id .. '}' end
local function user_seen_log(id) return pre .. ':seenlog:{' .. id .. '}' end
local function item_hash(id) return pre .. ':i:{' .. id .. '}' end
local function item_pending(id) return pre .. ':pend:{' .. id .. '}' end

-- Phase 1: check -------------------------------------------------------------------------
local wrong = {'wrong'}
local checked = {}
local function expect(key, kind)
  if checked[key] then return end
  checked[key] = true
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    wrong[#wrong + 1] = key
    wrong[#wrong + 1] = found
  end
end

expect(popularity, 'zset')
expect(landmark, 'string')
expect(variants, 'hash')
expect(ARGV[5], 'set')
for _, pair in ipairs(p.offsets) do expect(pair[1], 'string') end
-- Users waiting for a catalogued item's genres: their hashes are written too.
local pending_of = {}
for item in pairs(p.meta) do
  expect(item_hash(item), 'hash')
  local key = item_pending(item)
  expect(key, 'hash')
  if redis.call('TYPE', key)['ok'] == 'hash' then
    local waiting = redis.call('HGETALL', key)
    pending_of[item] = waiting
    for i = 1, #waiting, 2 do
      local found = redis.call('TYPE', user_hash(waiting[i]))['ok']
      if found ~= 'none' and found ~= 'hash' then
        wrong[#wrong + 1] = key  -- the item event is what cannot be applied
        wrong[#wrong + 1] = 'hash naming ' .. user_hash(waiting[i]) .. ', a ' .. found
      end
    end
  end
end
for _, it in ipairs(p.items) do expect(item_hash(it[1]), 'hash') end
for _, u in ipairs(p.users) do
  expect(user_hash(u[1]), 'hash')
  expect(user_seq(u[1]), 'zset')
  expect(user_seen(u[1]), 'set')
  expect(user_seen_log(u[1]), 'list')
  for _, pair in ipairs(u[6]) do
    expect(item_hash(pair[1]), 'hash')
    expect(item_pending(pair[1]), 'hash')
  end
end
if #wrong > 1 then return wrong end

-- Phase 2: write -------------------------------------------------------------------------
if p.rebase then
  redis.call('ZUNIONSTORE', popularity, 1, popularity, 'WEIGHTS', p.rebase)
end
if p.landmark then redis.call('SET', landmark, p.landmark) end

for item, meta in pairs(p.meta) do
  local args = {}
  for name, value in pairs(meta) do
    args[#args + 1] = name
    args[#args + 1] = value
  end
  if #args > 0 then redis.call('HSET', item_hash(item), unpack(args)) end
end

-- The genres of an item, or nil while the catalog has not named it.
local genres_of = {}
local function genres(item)
  local found = genres_of[item]
  if found == nil then
    local raw = redis.call('HGET', item_hash(item), 'genres')
    if raw then
      found = {}
      for genre in string.gmatch(raw, '[^|]+') do found[#found + 1] = genre end
    else
      found = false
    end
    genres_of[item] = found
  end
  return found or nil
end

-- Credit the users who rated or clicked a newly catalogued item before it was named.
for item, waiting in pairs(pending_of) do
  local named = genres(item)
  for i = 1, #waiting, 2 do
    local key = user_hash(waiting[i])
    for _, genre in ipairs(named) do
      redis.call('HINCRBYFLOAT', key, 'g:' .. genre, waiting[i + 1])
    end
  end
  redis.call('DEL', item_pending(item))
end

-- Add `delta` (field -> number) to the numeric fields of a hash: one read and one write per
-- key, not one call per field; a field that does not hold a number counts as 0.
local function add_numbers(key, delta, fields)
  local names = {}
  for name in pairs(delta) do names[#names + 1] = name end
  if #names == 0 and #fields == 0 then return {} end
  local sums = {}
  if #names > 0 then
    local current = redis.call('HMGET', key, unpack(names))
    for i, name in ipairs(names) do
      local value = (tonumber(current[i]) or 0) + delta[name]
      sums[name] = value
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
  end
  redis.call('HSET', key, unpack(fields))
  return sums
end

-- Add a user's items to the seen set, and those new to it to the seen log in the same order.
local function add_seen(user, members)
  local set, log = user_seen(user), user_seen_log(user)
  if redis.call('EXISTS', log) == 0 then  -- a set from before the log existed: seed it once
    local held = redis.call('SMEMBERS', set)
    for start = 1, #held, 4000 do  -- unpack has a stack limit: add in slices
      redis.call('RPUSH', log, unpack(held, start, math.min(start + 3999, #held)))
    end
  end
  local known = redis.call('SMISMEMBER', set, unpack(members))
  local fresh, taken = {}, {}
  for i, member in ipairs(members) do
    if known[i] == 0 and not taken[member] then
      taken[member] = true
      fresh[#fresh + 1] = member
    end
  end
  if #fresh > 0 then
    redis.call('SADD', set, unpack(fresh))
    redis.call('RPUSH', log, unpack(fresh))
  end
end

for _, u in ipairs(p.users) do
  -- Every numeric field of the user (counters, rating sum, genre affinities "g:<genre>").
  local delta = {ratings = 0, clicks = 0}
  for name, n in pairs(u[2]) do delta[name] = n end
  if u[3] ~= 0 then delta.rating_sum = u[3] end
  for _, pair in ipairs(u[6]) do
    local named = genres(pair[1])
    if named then
      for _, genre in ipairs(named) do
        local name = 'g:' .. genre
        delta[name] = (delta[name] or 0) + pair[2]
      end
    else
      redis.call('HINCRBYFLOAT', item_pending(pair[1]), u[1], pair[2])
    end
  end
  local sums = add_numbers(user_hash(u[1]), delta, {'last_ts', u[4], 'updated_ms', now_ms})
  local total = sums.ratings + sums.clicks
  local seq = u[5]
  if #seq > 0 then
    local scored, members = {}, {}
    for _, pair in ipairs(seq) do
      scored[#scored + 1] = pair[2]
      scored[#scored + 1] = pair[1]
      members[#members + 1] = pair[1]
    end
    -- GT: an item seen again moves to its latest time; an older event never moves it back.
    redis.call('ZADD', user_seq(u[1]), 'GT', unpack(scored))
    -- The set holds distinct items, never more than the user's events: trim only past the cap.
    if total > cap then redis.call('ZREMRANGEBYRANK', user_seq(u[1]), 0, -cap - 1) end
    add_seen(u[1], members)
  end
end

for _, it in ipairs(p.items) do
  local delta = {}
  for name, n in pairs(it[2]) do delta[name] = n end
  if it[3] ~= 0 then delta.rating_sum = it[3] end
  add_numbers(item_hash(it[1]), delta, {})
end

for item, score in pairs(p.pop) do
  redis.call('ZINCRBY', popularity, score, item)
end

if next(p.variants) ~= nil then
  local delta = {}
  for name, n in pairs(p.variants) do delta[name] = n end
  add_numbers(variants, delta, {})
end

local ids = p.ids
for start = 1, #ids, 4000 do  -- unpack has a stack limit: add in slices
  redis.call('SADD', ARGV[5], unpack(ids, start, math.min(start + 3999, #ids)))
end
if #ids > 0 then redis.call('EXPIRE', ARGV[5], ARGV[6]) end

-- Offsets last, and only forward: a smaller redelivered batch never lowers the guard.
for _, pair in ipairs(p.offsets) do
  local current = tonumber(redis.call('GET', pair[1]))
  if current == nil or tonumber(pair[2]) > current then redis.call('SET', pair[1], pair[2]) end
end
return {'ok', #p.users}
