-- Fire the timers that are due, each exactly once however many nodes call this: take
-- it off the sorted set, append its envelope to the replay log and push its Celery
-- message onto its partition queue, all in this one script. Due is judged on this
-- Redis's clock, which every node shares.
-- The timer hashes and queues are named by the set's members and hashes: the pipeline
-- DB is one server (not a cluster), as for the ingress's script.
-- KEYS[1] the timers sorted set, KEYS[2] the replay log
-- ARGV[1] most timers to fire in this call, ARGV[2], ARGV[3] replay-log retention (oldest
-- id to keep, most entries or 0), as in accept.lua
-- Returns {fired, envelopes the caller must publish (the broker is elsewhere), the next
-- due time in ms or -1}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local fired, publish = 0, {}
for _, name in ipairs(due) do
  redis.call('ZREM', KEYS[1], name)
  local f = redis.call('HMGET', name, 'envelope', 'message', 'queue', 'partition', 'tenant', 'user')
  if f[1] then  -- else cancelled, or expired while every node was down for days
    redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[2], '*', 'envelope', f[1],
      'partition', f[4], 'tenant', f[5], 'user', f[6], 'kind', 'timer')
    if f[2] ~= '' then
      redis.call('LPUSH', f[3], f[2])
    else
      publish[#publish + 1] = f[1]
    end
    redis.call('HDEL', name, 'envelope', 'message')
    fired = fired + 1
  end
end
if fired > 0 and ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[3])
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {fired, publish, next_due[2] or -1}
