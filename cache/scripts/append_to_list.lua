-- ARGV[3]: field, ARGV[4]: the item as JSON text. A missing field becomes [item].
-- Text surgery on the stored array: the items already there are never re-encoded.
local key, field = KEYS[1], ARGV[3]
local current = redis.call('HGET', key, field)
local updated
if not current or current == '[]' then
  updated = '[' .. ARGV[4] .. ']'
elseif string.sub(current, 1, 1) ~= '[' then
  return redis.error_reply('PARLEY_NOT_LIST')
else
  updated = string.sub(current, 1, -2) .. ',' .. ARGV[4] .. ']'
end
local needs_default = needs_default_ttl(key)
redis.call('HSET', key, MARKER, '1', field, updated)
finish_ttl(key, needs_default)
return 1
