-- Give leases up; only the holder can (a late release must not free a successor's).
-- KEYS the leases; ARGV[1] node name. Returns how many were released.
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
