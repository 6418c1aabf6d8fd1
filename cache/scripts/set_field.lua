-- ARGV[3]: field, ARGV[4]: JSON text. Creates the document if missing.
local key = KEYS[1]
local needs_default = needs_default_ttl(key)
redis.call('HSET', key, MARKER, '1', ARGV[3], ARGV[4])
finish_ttl(key, needs_default)
return 1
