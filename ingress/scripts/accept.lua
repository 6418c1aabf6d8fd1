-- Accept a delivery's envelopes in ONE round trip: dedup, replay log, enqueue.
-- KEYS[1]            the replay log stream
-- KEYS[2i], KEYS[2i+1]  envelope i's dedup key and partition queue (Celery's Redis list)
-- ARGV[1]            dedup ttl (seconds)
-- ARGV[2], ARGV[3]   replay-log retention: oldest id to keep, most entries (0: no cap);
--                    trimmed approximately (~), which costs next to nothing
-- ARGV[4+4(i-1)..]   envelope i: envelope JSON, Celery message JSON, partition, index fields
--                    (tenant|user|kind, for the replay filters)
-- Returns, per envelope, its replay-log id, or false when it was a duplicate.
-- All or nothing: one script, so a failure before it runs marks nothing as seen.
local results = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local seen, queue = KEYS[2 * i], KEYS[2 * i + 1]
  local base = 4 + 4 * (i - 1)
  local envelope, message, partition, index = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  if redis.call('SET', seen, '1', 'NX', 'EX', ARGV[1]) then
    local t, u, k = string.match(index, '^(.-)|(.-)|(.*)$')
    results[i] = redis.call(
      'XADD', KEYS[1], 'MINID', '~', ARGV[2], '*', 'envelope', envelope,
      'partition', partition, 'tenant', t, 'user', u, 'kind', k)
    if message ~= '' then  -- '' when the broker lives elsewhere: the ingress publishes
      redis.call('LPUSH', queue, message)
    end
  else
    results[i] = false
  end
end
if ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3])
end
return results
