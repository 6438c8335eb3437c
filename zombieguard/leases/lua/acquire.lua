-- Start a new attempt of a job.
-- KEYS: lease, due, fence, checkpoint, adapters, queues (queue -> adapter, for the silence watch),
--       held (the jobs the worker acquired)
-- ARGV[1]: the attempt number the delivery claims to be ('' when the framework cannot say)
-- ARGV[2..]: static field / value pairs (job, adapter, task, queue, worker, lease_ttl, hard_timeout,
--            progress_timeout, overdue_grace, max_stalls, dead_letter, payload, and optionally tag
--            and writer)
-- tag: names one execution of the job (its worker's processes agree on it). A live running lease of
-- the same worker under the same tag is that execution's own lease: it is taken over (its token
-- returned, the lease renewed), not refused. writer = '1': the acquire is made on the execution's
-- behalf by another process of its worker (its own could not run). When the lease passes from one
-- side to the other (the execution takes over the writer's, or the writer finds the execution's),
-- it is marked 'adopted': the execution records its end, and the writer must not (release.lua).
-- Returns {'acquired', token, attempt, stalls, started, checkpoint|nil, replaced}
--      or {'busy', attempt, state, worker}  a live attempt holds the job (duplicate delivery)
--      or {'stale', attempt, state}         the delivery is for an attempt already superseded
local now = now_s()
local delivery = tonumber(ARGV[1])
local static = {}
for i = 2, #ARGV, 2 do static[ARGV[i]] = ARGV[i + 1] end

local attempt, stalls, history, replaced = 1, 0, '', ''
local kind = key_type(KEYS[1])
if kind == 'hash' then
  local r = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'stalls', 'worker', 'history', 'tag', 'token',
    'started', 'writer', 'expires', 'lease_ttl', 'hard_deadline', 'progress_deadline', 'overdue_grace')
  local expires, ttl, grace = tonumber(r[10]), tonumber(r[11]), tonumber(r[14])
  if static.tag and static.tag ~= '' and r[6] == static.tag and r[1] == 'running' and r[4] == static.worker
      and expires and ttl and grace and expires > now then
    -- Renewed as it is taken over: the taker counts on lease_ttl from now. An expired one is left to
    -- a sweeper (below: refused), as any other.
    expires = now + ttl
    redis.call('HSET', KEYS[1], 'renewed', fmt(now), 'expires', fmt(expires))
    redis.call('ZADD', KEYS[2], fmt(due_score(expires, tonumber(r[12]), tonumber(r[13]), grace)), static.job)
    if (static.writer == '1') ~= (r[9] == '1') then redis.call('HSET', KEYS[1], 'adopted', '1') end
    return {'acquired', r[7], r[2], r[3] or '0', r[8], redis.call('GET', KEYS[4]), ''}
  end
  local prev = tonumber(r[2])
  if prev == nil then
    replaced = 'lease record had an unreadable attempt ' .. tostring(r[2])
  else
    if delivery and delivery <= prev then return {'stale', tostring(prev), r[1] or ''} end
    if r[1] == 'running' or r[1] == 'recovering' then
      -- A live attempt, or one a sweeper is recovering: this delivery is a duplicate. An expired
      -- running lease is left for a sweeper too, so that exactly one path decides what happens.
      return {'busy', tostring(prev), r[1], r[4] or ''}
    end
    attempt = prev + 1
    stalls = tonumber(r[3]) or 0
    history = r[5] or ''
  end
  redis.call('DEL', KEYS[1])
elseif kind ~= 'none' then
  replaced = 'lease key held a ' .. kind
  redis.call('DEL', KEYS[1])
end

local token = redis.call('INCR', KEYS[3])
local ttl = tonumber(static.lease_ttl)
local hard = tonumber(static.hard_timeout)
local prog = tonumber(static.progress_timeout)
local grace = tonumber(static.overdue_grace)
local expires = now + ttl
local hard_deadline = hard and now + hard or nil
local progress_deadline = prog and now + prog or nil

local fields = {
  'state', 'running', 'token', token, 'attempt', attempt, 'stalls', stalls,
  'started', fmt(now), 'renewed', fmt(now), 'expires', fmt(expires),
  'last_beat', fmt(now), 'last_progress', fmt(now), 'history', history,
  'hard_deadline', hard_deadline and fmt(hard_deadline) or '',
  'progress_deadline', progress_deadline and fmt(progress_deadline) or '',
}
for k, v in pairs(static) do
  fields[#fields + 1] = k
  fields[#fields + 1] = v
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], fmt(due_score(expires, hard_deadline, progress_deadline, grace)), static.job)
redis.call('SADD', KEYS[5], static.adapter)
redis.call('SADD', KEYS[7], static.job)
if static.queue and static.queue ~= '' then redis.call('HSET', KEYS[6], static.queue, static.adapter) end
local checkpoint = redis.call('GET', KEYS[4])
return {'acquired', tostring(token), tostring(attempt), tostring(stalls), fmt(now), checkpoint, replaced}
