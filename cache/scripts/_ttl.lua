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

-- Replace the whole document with ARGV[from..] (field, JSON text, field, JSON text, ...):
-- its expiry stays unless ARGV[1] gives a ttl, and a document this creates gets the
-- default ttl (ARGV[2], read only then). set, create_if_absent and replace_if share it.
local function replace_document(key, from)
  local pttl = redis.call('PTTL', key)
  redis.call('DEL', key)
  redis.call('HSET', key, MARKER, '1')
  local i = from
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
end
