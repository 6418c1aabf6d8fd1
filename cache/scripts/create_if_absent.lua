-- Create the document only if it does not exist.
-- ARGV[3..]: field, JSON text, field, JSON text, ...
-- Returns 1 (CREATED), or the existing hash as HGETALL gives it (ALREADY_EXISTS: the
-- document is left as it was, expiry included).
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return redis.call('HGETALL', key)
end
replace_document(key, 3)
return 1
