-- A sweeper writes down the end it gives a job it claimed, before it records that end in the
-- framework: a sweeper that takes the claim over (this one died between the two) finishes the same
-- end, rather than taking the framework's record of it for an end the job reached by itself.
-- KEYS: lease
-- ARGV: claim token, verdict ('failed' | 'dead_lettered')
-- Returns 1, or 0 when another sweeper took the claim over.
if key_type(KEYS[1]) ~= 'hash' then return 0 end
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'recovering' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'verdict', ARGV[2])
return 1
