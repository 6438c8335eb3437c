-- Recreate a lease that vanished while its attempt kept running (Redis restarted without
-- persistence, was flushed, or failed over before a replica had the acquire). Overwrites only the
-- queued record the attempt's lost acquire had replaced (see acquire_lost), keeping its history.
-- KEYS: lease, due, fence, adapters, held (the jobs the worker acquired)
-- ARGV: token, attempt, stalls, started, then static field / value pairs as for acquire
-- Returns {'ok'} or {'exists'}
local history = ''
local kind = key_type(KEYS[1])
if kind == 'hash' then
  local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'history')
  if not acquire_lost(r[1], r[2], ARGV[1]) then return {'exists'} end
  history = r[3] or ''
  redis.call('DEL', KEYS[1])
elseif kind ~= 'none' then
  return {'exists'}
end
local now = now_s()
local token = tonumber(ARGV[1])
-- The fencing counter may have been lost too: never hand out this token, or an older one, again.
if (tonumber(redis.call('GET', KEYS[3])) or 0) < token then redis.call('SET', KEYS[3], token) end
local static = {}
for i = 5, #ARGV, 2 do static[ARGV[i]] = ARGV[i + 1] end
local started = tonumber(ARGV[4])
local ttl = tonumber(static.lease_ttl)
local hard = tonumber(static.hard_timeout)
local prog = tonumber(static.progress_timeout)
local expires = now + ttl
local hard_deadline = hard and started + hard or nil
local progress_deadline = prog and now + prog or nil
local fields = {
  'state', 'running', 'token', ARGV[1], 'attempt', ARGV[2], 'stalls', ARGV[3],
  'started', fmt(started), 'renewed', fmt(now), 'expires', fmt(expires),
  'last_beat', fmt(now), 'last_progress', fmt(now), 'history', history,
  'hard_deadline', hard_deadline and fmt(hard_deadline) or '',
  'progress_deadline', progress_deadline and fmt(progress_deadline) or '',
}
for k, v in pairs(static) do
  fields[#fields + 1] = k
  fields[#fields + 1] = v
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], fmt(due_score(expires, hard_deadline, progress_deadline,
  tonumber(static.overdue_grace))), static.job)
redis.call('SADD', KEYS[4], static.adapter)
redis.call('SADD', KEYS[5], static.job)
return {'ok'}
