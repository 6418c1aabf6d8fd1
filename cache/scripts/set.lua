-- Replace the whole document; keep its expiry unless a ttl is given.
-- ARGV[3..]: field, JSON text, field, JSON text, ...
replace_document(KEYS[1], 3)
return 1
