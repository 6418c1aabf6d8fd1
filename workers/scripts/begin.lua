-- Start handling an envelope: refuse if it is already done, else add it to the
-- partition's in-flight records (so a node that takes the partition over after a
-- crash finishes every started envelope before anything newer of the same user).
-- With --partitions auto the node must also hold the partition's lease right now: a
-- node that lost it without noticing yet (starved past the lease's expiry) must not
-- run next to the new owner.
-- KEYS[1] done-marker, KEYS[2] the partition's in-flight hash, KEYS[3] its lease
-- ARGV[1] the in-flight record (JSON: node, started_at, envelope), ARGV[2] node name,
-- ARGV[3] '1' to require the lease, ARGV[4] the record's field (the done-marker key)
-- Returns 1 started, 0 already done, -1 lease not held
if ARGV[3] == '1' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
return 1
