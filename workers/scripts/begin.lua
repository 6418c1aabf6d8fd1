-- Start handling an envelope: refuse if it is already done, else record it as the
-- partition's in-flight envelope (so a node that takes the partition over after a
-- crash finishes it before anything newer). With --partitions auto the node must
-- also hold the partition's lease right now: a node that lost it without noticing
-- yet (starved past the lease's expiry) must not run next to the new owner.
-- KEYS[1] done-marker, KEYS[2] the partition's in-flight record, KEYS[3] its lease
-- ARGV[1] envelope JSON, ARGV[2] node name, ARGV[3] start time (epoch seconds),
-- ARGV[4] '1' to require the lease
-- Returns 1 started, 0 already done, -1 lease not held
if ARGV[4] == '1' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], 'envelope', ARGV[1], 'node', ARGV[2], 'started_at', ARGV[3])
return 1
