-- A node's heartbeat: (re)register it as live until now + ttl, forget nodes whose
-- heartbeat ran out, and return the live nodes. Redis's clock, so nodes on machines
-- with skewed clocks agree on who is alive.
-- KEYS[1] the node registry (sorted set: node -> expiry in ms)
-- ARGV[1] node name, ARGV[2] ttl in ms ('0': only read, register nothing)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
