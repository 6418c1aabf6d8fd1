-- Dead-letter an envelope: add its entry to the dead-letter stream, mark it done (so a
-- redelivery is acked without running) and remove it from the partition's in-flight
-- records. One script, and a no-op when the envelope is already marked done, so a
-- call retried after a lost reply never adds a second entry.
-- KEYS[1] done-marker, KEYS[2] the partition's in-flight hash (field: KEYS[1]),
-- KEYS[3] dead-letter stream
-- ARGV[1] done ttl, ARGV[2] the replayed dead letter's entry id or '',
-- ARGV[3..] the entry's field/value pairs
-- Returns the entry's id (the existing one's when already recorded)
local done = redis.call('GET', KEYS[1])
if done then
  return string.match(done, '^dead (.*)$') or ''
end
if ARGV[2] ~= '' then  -- failed again: the new entry replaces the old
  redis.call('XDEL', KEYS[3], ARGV[2])
end
local id = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], 'dead ' .. id, 'EX', ARGV[1])
redis.call('HDEL', KEYS[2], KEYS[1])
return id
