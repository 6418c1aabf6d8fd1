-- Dead-letter an envelope: add its entry to the dead-letter stream, mark it done (so a
-- redelivery is acked without running) and remove it from the partition's in-flight
-- records. One script, and a no-op when the envelope is already marked done, so a
-- call retried after a lost reply never adds a second entry.
-- A dead letter keeps one id for people (field 'id'; absent: its stream id) while its
-- stream entry changes: a replay that fails again replaces the entry, and the new one
-- carries the old one's id, so an id noted from `parley dead list` keeps working.
-- KEYS[1] done-marker, KEYS[2] the partition's in-flight hash (field: KEYS[1]),
-- KEYS[3] dead-letter stream
-- ARGV[1] done ttl, ARGV[2] the replayed dead letter's entry id or '',
-- ARGV[3..] the entry's field/value pairs
-- Returns the dead letter's id (the existing one's when already recorded)
local done = redis.call('GET', KEYS[1])
if done then
  return string.match(done, '^dead (.*)$') or ''
end
local fields = {unpack(ARGV, 3)}
local id = nil
if ARGV[2] ~= '' then  -- failed again: the new entry replaces the old, under its id
  id = ARGV[2]
  local old = redis.call('XRANGE', KEYS[3], ARGV[2], ARGV[2])
  if old[1] then
    local pairs_ = old[1][2]
    for i = 1, #pairs_, 2 do
      if pairs_[i] == 'id' then
        id = pairs_[i + 1]
      end
    end
  end
  redis.call('XDEL', KEYS[3], ARGV[2])
  table.insert(fields, 'id')
  table.insert(fields, id)
end
local entry = redis.call('XADD', KEYS[3], '*', unpack(fields))
id = id or entry
redis.call('SET', KEYS[1], 'dead ' .. id, 'EX', ARGV[1])
redis.call('HDEL', KEYS[2], KEYS[1])
return id
