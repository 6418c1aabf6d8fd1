-- Replace the whole document only if every expected field holds the expected value.
-- ARGV[2]: n, the number of expected fields (replace_if never creates, so there is no
--          default ttl to pass)
-- ARGV[3 .. 2+2n]: field, expected JSON text, ...
-- ARGV[3+2n ..]:   field, JSON text, ... (the new document)
-- Returns 0 (MISSING), 1 (REPLACED, expiry kept unless a ttl is given), or the hash as
-- HGETALL gives it (CONDITION_NOT_MET: the document is left as it was).

-- JSON equality with types kept, the twin of codec.json_equal: 1, 1.0, true and "1"
-- differ; object key order does not matter; floats compare as doubles. Integers compare
-- as their digits (cjson would turn them into doubles, losing 2^53 + 1), strings as
-- their JSON text (every text here comes from the one encoder, orjson, so equal strings
-- are equal texts). Values parse to: a Lua number (float), a string 'i<digits>',
-- 's<json text>', 't', 'f' or 'n', or a table {o = is_object, n = size, v = items}.
local function parse(text)
  local pos = 1
  local value
  local function skip()
    pos = string.find(text, '[^ \t\r\n]', pos) or (#text + 1)
  end
  local function str()
    local i = pos + 1
    while true do
      local at = string.find(text, '["\\]', i)
      if not at then error('PARLEY_BAD_JSON') end
      if string.byte(text, at) == 34 then  -- the closing quote
        local token = string.sub(text, pos, at)
        pos = at + 1
        return 's' .. token
      end
      i = at + 2  -- skip the escaped character
    end
  end
  value = function()
    skip()
    local c = string.byte(text, pos)
    if c == 123 or c == 91 then  -- { or [
      local object = c == 123
      local close = object and 125 or 93
      local items, n = {}, 0
      pos = pos + 1
      skip()
      if string.byte(text, pos) == close then
        pos = pos + 1
        return { o = object, n = 0, v = items }
      end
      while true do
        skip()
        n = n + 1
        if object then
          local name = str()
          skip()
          pos = pos + 1  -- the ':'
          items[name] = value()
        else
          items[n] = value()
        end
        skip()
        local sep = string.byte(text, pos)
        pos = pos + 1
        if sep == close then
          return { o = object, n = n, v = items }
        elseif sep ~= 44 then
          error('PARLEY_BAD_JSON')
        end
      end
    elseif c == 34 then
      return str()
    elseif c == 116 then
      pos = pos + 4
      return 't'
    elseif c == 102 then
      pos = pos + 5
      return 'f'
    elseif c == 110 then
      pos = pos + 4
      return 'n'
    end
    local first, last = string.find(text, '^[-+%d%.eE]+', pos)
    if not first then error('PARLEY_BAD_JSON') end
    local token = string.sub(text, first, last)
    pos = last + 1
    if string.find(token, '[%.eE]') then
      return tonumber(token)
    end
    return 'i' .. token
  end
  return value()
end

local function same(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) ~= 'table' then
    return a == b
  end
  if a.o ~= b.o or a.n ~= b.n then
    return false
  end
  for k, v in pairs(a.v) do
    local w = b.v[k]
    if w == nil or not same(v, w) then
      return false
    end
  end
  return true
end

local function json_equal(stored, expected)
  if stored == expected then
    return true
  end
  if string.byte(stored) == 34 and string.byte(expected) == 34 then
    return false  -- two strings with different texts: no need to parse
  end
  return same(parse(stored), parse(expected))
end

local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return 0
end
local n = tonumber(ARGV[2])
for k = 1, n do
  local current = redis.call('HGET', key, ARGV[1 + 2 * k])
  if not current or not json_equal(current, ARGV[2 + 2 * k]) then
    return redis.call('HGETALL', key)
  end
end
local pttl = redis.call('PTTL', key)
redis.call('DEL', key)
redis.call('HSET', key, MARKER, '1')
local i = 3 + 2 * n
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HSET', key, unpack(ARGV, i, j))
  i = j + 1
end
if ARGV[1] ~= '' then
  redis.call('EXPIRE', key, ARGV[1])
elseif pttl > 0 then
  redis.call('PEXPIRE', key, pttl)
end
return 1
