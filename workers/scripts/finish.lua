-- Finish an envelope: mark it done (so a redelivery is acked without running), remove
-- it from the partition's in-flight records, for a replayed dead letter drop its entry, and
-- count the handler's run time in the latency histogram.
-- One script rather than a MULTI pipeline: redis-py builds a pipeline object at a
-- cost of ~0.3 ms of CPU, more than the round trip itself.
-- KEYS[1] done-marker, KEYS[2] the partition's in-flight hash
-- (the envelope's field is its done-marker key, KEYS[1]), KEYS[3] dead-letter stream,
-- KEYS[4] latency histogram (hash)
-- ARGV[1] time, ARGV[2] done ttl, ARGV[3] dead-letter entry id or '',
-- ARGV[4] the run time's bucket field, ARGV[5] run time in seconds
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HDEL', KEYS[2], KEYS[1])
if ARGV[3] ~= '' then
  redis.call('XDEL', KEYS[3], ARGV[3])
end
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('HINCRBYFLOAT', KEYS[4], 'sum', ARGV[5])
return 1
