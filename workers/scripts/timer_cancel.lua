-- Cancel one timer, pending or fired and not yet run (its firing is then skipped).
-- KEYS[1] the timers sorted set, KEYS[2] the timer's hash
-- Returns 1 if there was one, 0 if not.
redis.call('ZREM', KEYS[1], KEYS[2])
return redis.call('DEL', KEYS[2])
