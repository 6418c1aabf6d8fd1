-- Schedule (or move) one timer: replace its hash and its due time, in one step.
-- KEYS[1] the timers sorted set, KEYS[2] the timer's hash
-- ARGV[1] due (epoch ms), ARGV[2] nonce, ARGV[3] envelope JSON, ARGV[4] Celery message
-- ('' when the broker is not this DB: the firing node publishes), ARGV[5] queue,
-- ARGV[6] partition, ARGV[7] tenant, ARGV[8] user, ARGV[9] ms the hash outlives its due
-- time (a firing, once claimed, keeps its nonce until its handler ran)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'nonce', ARGV[2], 'envelope', ARGV[3], 'message', ARGV[4],
  'queue', ARGV[5], 'partition', ARGV[6], 'tenant', ARGV[7], 'user', ARGV[8])
redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[9]))
redis.call('ZADD', KEYS[1], ARGV[1], KEYS[2])
return 1
