-- A sweeper claims the leases that are due: abandoned by their worker (with the reason it gave),
-- expired before the hard deadline plus grace (stalled), past the hard deadline plus grace while
-- still renewed then (timed out), past the progress deadline plus grace while still renewed (hung),
-- or requeued and started by no worker by its republish_at (unstarted: its message may sit in a
-- frozen consumer). Claiming bumps the fencing token, so the old attempt's writes are refused from
-- here on, and re-scores the lease at the claim's expiry: a sweeper that dies mid-recovery is
-- replaced after claim_ttl. Atomic, so sweepers racing over the same leases each get a disjoint set.
-- KEYS: due, fence, workers
-- ARGV: limit, claim_ttl, sweeper, key prefix
-- Returns {claims, dead_workers}; a claim is {job, 'claimed', record, checkpoint|nil} or
-- {job, 'corrupt', why}; a dead worker is {name, info}.
local now = now_s()
local limit, claim_ttl, sweeper, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local claims = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'LIMIT', 0, limit)
for _, job in ipairs(ids) do
  local key = prefix .. ':lease:' .. job
  local kind = key_type(key)
  local reason, problem, worker = nil, nil, nil
  if kind ~= 'hash' then
    problem = kind == 'none' and 'lease record is missing' or ('lease key holds a ' .. kind)
  else
    local r = redis.call('HMGET', key, 'state', 'expires', 'hard_deadline', 'progress_deadline',
      'overdue_grace', 'claim_expires', 'reason', 'abandoned', 'republish_at', 'worker')
    worker = r[10]
    if r[1] == 'running' then
      local expires, grace = tonumber(r[2]), tonumber(r[5])
      if expires == nil or grace == nil then
        problem = 'expires or overdue_grace unreadable: ' .. tostring(r[2]) .. ', ' .. tostring(r[5])
      else
        local hard, prog = tonumber(r[3]), tonumber(r[4])
        if r[8] then
          reason = r[8]
        elseif expires <= now and not (hard and hard + grace <= expires) then
          -- Its worker stopped renewing before the job was overdue: dead or frozen, a stall, even
          -- when no sweeper looked until the hard limit had passed as well.
          reason = 'stalled'
        elseif hard and hard + grace <= now then
          -- Past the hard limit while its worker still renewed it: re-running it would hang again.
          reason = 'timed_out'
        elseif prog and prog + grace <= now then
          reason = 'hung'
        else
          redis.call('ZADD', KEYS[1], fmt(due_score(expires, hard, prog, grace)), job)
        end
      end
    elseif r[1] == 'recovering' then
      local claim_expires = tonumber(r[6])
      if claim_expires == nil then
        problem = 'claim_expires unreadable: ' .. tostring(r[6])
      elseif claim_expires <= now then
        reason = r[7]
      else
        redis.call('ZADD', KEYS[1], fmt(claim_expires), job)
      end
    elseif r[1] == 'queued' and tonumber(r[9]) then
      if tonumber(r[9]) <= now then
        reason = 'unstarted'
      else
        redis.call('ZADD', KEYS[1], r[9], job)
      end
    elseif r[1] == 'queued' or r[1] == 'done' then
      redis.call('ZREM', KEYS[1], job)
    else
      problem = 'unknown state ' .. tostring(r[1])
    end
  end
  if problem then
    redis.call('ZREM', KEYS[1], job)
    claims[#claims + 1] = {job, 'corrupt', problem}
  elseif reason then
    if worker then redis.call('SREM', prefix .. ':held:' .. worker, job) end
    local token = redis.call('INCR', KEYS[2])
    redis.call('HSET', key, 'state', 'recovering', 'token', token, 'reason', reason,
      'claimed_by', sweeper, 'claimed_at', fmt(now), 'claim_expires', fmt(now + claim_ttl))
    redis.call('ZADD', KEYS[1], fmt(now + claim_ttl), job)
    claims[#claims + 1] = {job, 'claimed', redis.call('HGETALL', key),
      redis.call('GET', prefix .. ':checkpoint:' .. job)}
  end
end
local dead = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now), 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[3], name)
  local info_key = prefix .. ':worker:' .. name
  dead[#dead + 1] = {name, key_type(info_key) == 'hash' and redis.call('HGETALL', info_key) or {}}
  redis.call('DEL', info_key)
end
return {claims, dead}
