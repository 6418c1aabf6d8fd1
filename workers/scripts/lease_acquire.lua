-- Take a partition's lease if nobody holds it (or extend it if this node does).
-- KEYS[1] the lease; ARGV[1] node name, ARGV[2] ttl in ms
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
