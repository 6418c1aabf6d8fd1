-- Create the document only if it does not exist.
-- ARGV[3..]: field, JSON text, field, JSON text, ...
-- Returns 1 (CREATED), or the existing hash as HGETALL gives it (ALREADY_EXISTS: the
-- document is left as it was, expiry included).
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return redis.call('HGETALL', key)
end
redis.call('HSET', key, MARKER, '1')
local i = 3
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)  -- unpack() is bounded by Lua's C stack
  redis.call('HSET', key, unpack(ARGV, i, j))
  i = j + 1
end
if ARGV[1] ~= '' then
  redis.call('EXPIRE', key, ARGV[1])
elseif ARGV[2] ~= '' then
  redis.call('EXPIRE', key, ARGV[2])
end
return 1
