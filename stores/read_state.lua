-- Read what a consumer batch needs before it applies: one round trip, one argument per list.
-- KEYS[1]      the popularity landmark
-- KEYS[2], [3] the de-duplication sets of the current and the previous time bucket
-- KEYS[4..]    the last-applied-offset keys of the batch's partitions
-- ARGV[1]      the batch's event ids joined by ","
-- Returns {landmark or false, "0101..." (1 = event id already applied), offset, offset, ...}
local seen = {}
for id in string.gmatch(ARGV[1], '[^,]+') do
  if redis.call('SISMEMBER', KEYS[2], id) == 1 or redis.call('SISMEMBER', KEYS[3], id) == 1 then
    seen[#seen + 1] = '1'
  else
    seen[#seen + 1] = '0'
  end
end
local reply = {redis.call('GET', KEYS[1]), table.concat(seen)}
for i = 4, #KEYS do
  reply[#reply + 1] = redis.call('GET', KEYS[i])
end
return reply
