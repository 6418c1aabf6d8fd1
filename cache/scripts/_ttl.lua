-- Prelude of every writing script (cache/redis.py prepends it): DESIGN.md's TTL rules.
-- KEYS[1]  the document (a hash: one field per top-level field, each value JSON text)
-- ARGV[1]  ttl in seconds, or '' to keep the document's current expiry
-- ARGV[2]  the cache's default ttl, or '' for none: applied only when the write creates
--          the document
-- The marker field (a NUL byte, which no user field name may contain) keeps an empty
-- document ({}) in existence.
local MARKER = '\0'

-- Must run before the write: whether the write will create the document and so
-- has to apply the default ttl.
local function needs_default_ttl(key)
  return ARGV[1] == '' and ARGV[2] ~= '' and redis.call('EXISTS', key) == 0
end

local function finish_ttl(key, needs_default)
  if ARGV[1] ~= '' then
    redis.call('EXPIRE', key, ARGV[1])
  elseif needs_default then
    redis.call('EXPIRE', key, ARGV[2])
  end
end
