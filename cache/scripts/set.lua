-- Replace the whole document; keep its expiry unless a ttl is given.
-- ARGV[3..]: field, JSON text, field, JSON text, ...
local key = KEYS[1]
local pttl = redis.call('PTTL', key)
redis.call('DEL', key)
redis.call('HSET', key, MARKER, '1')
local i = 3
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)  -- unpack() is bounded by Lua's C stack
  redis.call('HSET', key, unpack(ARGV, i, j))
  i = j + 1
end
if ARGV[1] ~= '' then
  redis.call('EXPIRE', key, ARGV[1])
elseif pttl > 0 then
  redis.call('PEXPIRE', key, pttl)
elseif pttl == -2 and ARGV[2] ~= '' then
  redis.call('EXPIRE', key, ARGV[2])
end
return 1
