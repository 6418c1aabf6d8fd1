-- ARGV[3]: field, ARGV[4]: increment as JSON number text, ARGV[5]: '1' if it is a float.
-- A missing field starts at 0. int + int uses HINCRBY (exact 64-bit); anything else is
-- IEEE double arithmetic, written with 17 significant digits so it reads back as the
-- very same double, and always with a '.', 'e' or 'n' so it stays a JSON float.
-- Returns the new value as JSON text.
local key, field = KEYS[1], ARGV[3]
local current = redis.call('HGET', key, field)
if current and not string.match(current, '^%-?%d') then
  return redis.error_reply('PARLEY_NOT_NUMBER')
end
local needs_default = needs_default_ttl(key)
local result
if ARGV[5] == '0' and (not current or string.match(current, '^%-?%d+$')) then
  local n = redis.call('HINCRBY', key, field, ARGV[4])
  if n > -9007199254740992 and n < 9007199254740992 then
    result = string.format('%d', n)  -- exact: a Lua number holds integers up to 2^53
  else
    result = redis.call('HGET', key, field)
  end
else
  local sum = tonumber(current or '0') + tonumber(ARGV[4])
  if sum ~= sum or sum == math.huge or sum == -math.huge then
    return redis.error_reply('PARLEY_OVERFLOW')
  end
  result = string.format('%.17g', sum)
  if not string.find(result, '[%.eEn]') then
    result = result .. '.0'
  end
  redis.call('HSET', key, field, result)
end
if not current then
  redis.call('HSET', key, MARKER, '1')  -- the write may have created the document
end
finish_ttl(key, needs_default)
return result
