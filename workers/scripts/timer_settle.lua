-- A fired timer's handler ended (done or dead-lettered): drop its hash, unless the
-- timer was scheduled again meanwhile (a new nonce: that one is pending).
-- KEYS[1] the timer's hash; ARGV[1] the nonce of the firing that ended
if redis.call('HGET', KEYS[1], 'nonce') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
