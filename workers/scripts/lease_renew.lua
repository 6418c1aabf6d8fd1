-- Renew the leases this node holds; only the holder can. Returns 1/0 per key:
-- 0 means the lease ran out or another node holds it now.
-- KEYS the leases; ARGV[1] node name, ARGV[2] ttl in ms
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
