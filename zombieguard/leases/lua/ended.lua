-- Note on a running lease the processes its attempt started that were ended with it: the attempt's
-- history entry names them (release.lua, or a sweeper's claim).
-- KEYS: lease
-- ARGV: token ('' : whichever attempt the worker runs), worker, processes ("pid command" lines)
-- Returns 'ok', or 'refused' when the worker's attempt no longer holds the lease.
if key_type(KEYS[1]) ~= 'hash' then return 'refused' end
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'worker', 'ended_processes')
if r[1] ~= 'running' or r[3] ~= ARGV[2] or (ARGV[1] ~= '' and r[2] ~= ARGV[1]) then return 'refused' end
local before = r[4] or ''
if before ~= '' then before = before .. '\n' end
redis.call('HSET', KEYS[1], 'ended_processes', before .. ARGV[3])
return 'ok'
