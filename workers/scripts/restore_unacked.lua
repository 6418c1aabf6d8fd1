-- Put one unacked message back at the front of its queue, unless someone (kombu's own
-- restore, an ack) took it out of the unacked hash first. One script instead of
-- WATCH/MULTI: the unacked hash changes with every ack of every node, so a WATCH on it
-- fails over and over under load.
-- KEYS[1] kombu's unacked hash, KEYS[2] its index (sorted set), KEYS[3] the queue
-- ARGV[1] delivery tag, ARGV[2] the message to push (marked redelivered)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
