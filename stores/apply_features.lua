-- Apply one aggregated batch of feature updates (built by stores/features.py).
-- Runs inside the consumer's MULTI/EXEC, next to the offset and event-id writes, so the whole
-- batch is one atomic step. Doing the per-key work here instead of one Python command per key
-- is what makes ingest fast: Python sends one payload, Redis runs the loops in C/Lua.
--
-- ARGV[1]  JSON payload:
--   meta     {item: {title=..., genres="a|b", year=...}}     catalog upserts (applied first)
--   users    [[user, {field: n}, rating_sum, last_ts, [[item, ts]...], [[item, affinity]...]]]
--   items    [[item, {field: n}, rating_sum]]
--   pop      {item: decayed increment}
--   variants {"model|variant|field": n}
--   ids      [event id, ...] applied by this batch, for de-duplication
-- ARGV[2]  cap of the recent-items sorted set per user
-- ARGV[3]  now, in ms (the users' updated_ms)
-- ARGV[4]  key prefix ("sr")
-- ARGV[5]  the de-duplication set of the current time bucket
-- ARGV[6]  its time to live, in seconds
--
-- Keys are derived from ids, not passed as KEYS: fine on one Redis server or a replicated
-- one; Redis Cluster would need hash-tagged keys per user.
local p = cjson.decode(ARGV[1])
local cap = tonumber(ARGV[2])
local now_ms = ARGV[3]
local pre = ARGV[4]

for item, meta in pairs(p.meta) do
  local args = {}
  for name, value in pairs(meta) do
    args[#args + 1] = name
    args[#args + 1] = value
  end
  if #args > 0 then redis.call('HSET', pre .. ':i:' .. item, unpack(args)) end
end

local genres_of = {}
local function genres(item)
  local found = genres_of[item]
  if found == nil then
    found = {}
    local raw = redis.call('HGET', pre .. ':i:' .. item, 'genres')
    if raw then
      for genre in string.gmatch(raw, '[^|]+') do found[#found + 1] = genre end
    end
    genres_of[item] = found
  end
  return found
end

for _, u in ipairs(p.users) do
  local key = pre .. ':u:' .. u[1]
  -- Every numeric field of the user (counters, rating sum, genre affinities "g:<genre>") is
  -- read once and written once: two calls per user instead of one per field.
  local delta = {ratings = 0, clicks = 0}
  for name, n in pairs(u[2]) do delta[name] = n end
  if u[3] ~= 0 then delta.rating_sum = u[3] end
  for _, pair in ipairs(u[6]) do
    for _, genre in ipairs(genres(pair[1])) do
      local name = 'g:' .. genre
      delta[name] = (delta[name] or 0) + pair[2]
    end
  end
  local names = {}
  for name in pairs(delta) do names[#names + 1] = name end
  local current = redis.call('HMGET', key, unpack(names))
  local fields = {'last_ts', u[4], 'updated_ms', now_ms}
  local total = 0
  for i, name in ipairs(names) do
    local value = (tonumber(current[i]) or 0) + delta[name]
    fields[#fields + 1] = name
    fields[#fields + 1] = value
    if name == 'ratings' or name == 'clicks' then total = total + value end
  end
  redis.call('HSET', key, unpack(fields))
  local seq = u[5]
  if #seq > 0 then
    local scored, members = {}, {}
    for _, pair in ipairs(seq) do
      scored[#scored + 1] = pair[2]
      scored[#scored + 1] = pair[1]
      members[#members + 1] = pair[1]
    end
    -- GT: an item seen again moves to its latest time; an older event never moves it back.
    redis.call('ZADD', key .. ':seq', 'GT', unpack(scored))
    -- The set holds distinct items, never more than the user's events: trim only past the cap.
    if total > cap then redis.call('ZREMRANGEBYRANK', key .. ':seq', 0, -cap - 1) end
    redis.call('SADD', key .. ':seen', unpack(members))
  end
end

for _, it in ipairs(p.items) do
  local key = pre .. ':i:' .. it[1]
  for name, n in pairs(it[2]) do redis.call('HINCRBY', key, name, n) end
  if it[3] ~= 0 then redis.call('HINCRBYFLOAT', key, 'rating_sum', it[3]) end
end

for item, score in pairs(p.pop) do
  redis.call('ZINCRBY', pre .. ':popularity', score, item)
end

for name, n in pairs(p.variants) do
  redis.call('HINCRBY', pre .. ':variants', name, n)
end
local ids = p.ids
for start = 1, #ids, 4000 do  -- unpack has a stack limit: add in slices
  redis.call('SADD', ARGV[5], unpack(ids, start, math.min(start + 3999, #ids)))
end
if #ids > 0 then redis.call('EXPIRE', ARGV[5], ARGV[6]) end
return #p.users
