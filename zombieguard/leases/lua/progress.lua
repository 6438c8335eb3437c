-- A job proves progress (beat), optionally saving a checkpoint in the same fenced write.
-- KEYS: lease, due, checkpoint
-- ARGV: token, job, progress ('' = unchanged), message ('' = unchanged), save ('1'/'0'),
--       checkpoint value, state_ttl_ms
-- Returns {'ok', now} or {'lost', state, token} or {'missing'} or {'corrupt', why}
local kind = key_type(KEYS[1])
if kind == 'none' then return {'missing'} end
if kind ~= 'hash' then return {'corrupt', 'lease key holds a ' .. kind} end
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'lease_ttl', 'hard_deadline',
  'progress_timeout', 'overdue_grace')
if acquire_lost(r[1], r[2], ARGV[1]) then return {'missing'} end
if r[1] ~= 'running' or r[2] ~= ARGV[1] then return {'lost', r[1] or '', r[2] or ''} end
local ttl, grace = tonumber(r[3]), tonumber(r[6])
if ttl == nil or grace == nil then return {'corrupt', 'lease_ttl or overdue_grace unreadable'} end
local now = now_s()
local why = given_up(KEYS[1], KEYS[2], ARGV[2], now)
if why then return {'lost', 'given up as ' .. why, r[2]} end
local expires = now + ttl
local pt = tonumber(r[5])
local progress_deadline = pt and now + pt or nil
redis.call('HSET', KEYS[1], 'last_beat', fmt(now), 'last_progress', fmt(now), 'renewed', fmt(now),
  'expires', fmt(expires), 'progress_deadline', progress_deadline and fmt(progress_deadline) or '')
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[4]) end
redis.call('ZADD', KEYS[2], fmt(due_score(expires, tonumber(r[4]), progress_deadline, grace)), ARGV[2])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
  redis.call('HSET', KEYS[1], 'checkpoint_at', fmt(now))
end
return {'ok', fmt(now)}
