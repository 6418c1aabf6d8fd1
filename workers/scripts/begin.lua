-- Start handling an envelope: refuse if it is already done, else record it as the
-- partition's in-flight envelope (so a node that takes the partition over after a
-- crash finishes it before anything newer).
-- KEYS[1] done-marker, KEYS[2] the partition's in-flight record
-- ARGV[1] envelope JSON, ARGV[2] node name, ARGV[3] start time (epoch seconds)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], 'envelope', ARGV[1], 'node', ARGV[2], 'started_at', ARGV[3])
return 1
