-- The worker (or the watchdog beside it) gives an attempt up: its process died or was killed.
-- Fenced. The lease is made due now, with the reason the sweeper must act on: 'stalled' (recover
-- it), 'timed_out' or 'hung' (fail it). The stack, when captured, goes with it, and how the process
-- ended ('killed by signal 9 (SIGKILL)'), when known, for the attempt's history.
-- KEYS: lease, due
-- ARGV: token, job, reason, stack, how
-- Returns {'ok'} or {'lost', state, token} or {'missing'} (see acquire_lost) or {'corrupt', why}
local kind = key_type(KEYS[1])
if kind == 'none' then return {'missing'} end
if kind ~= 'hash' then return {'corrupt', 'lease key holds a ' .. kind} end
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'abandoned')
if acquire_lost(r[1], r[2], ARGV[1]) then return {'missing'} end
if r[1] ~= 'running' or r[2] ~= ARGV[1] then return {'lost', r[1] or '', r[2] or ''} end
-- Given up twice (the worker's threads and its watchdog process both woke from a freeze): the
-- first reason, and its stack, stand.
if r[3] then return {'ok'} end
local now = now_s()
redis.call('HSET', KEYS[1], 'expires', fmt(now), 'abandoned', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'stack', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'abandoned_how', ARGV[5]) end
redis.call('ZADD', KEYS[2], fmt(now), ARGV[2])
return {'ok'}
