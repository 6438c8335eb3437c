-- A sweeper claims the leases that are due: abandoned by their worker (with the reason it gave),
-- expired before the hard deadline plus grace (stalled), past the hard deadline plus grace while
-- still renewed then (timed out), past the progress deadline plus grace while still renewed (hung),
-- or requeued and started by no worker by its republish_at (unstarted: its message may sit in a
-- frozen consumer). Claiming bumps the fencing token, so the old attempt's writes are refused from
-- here on, and re-scores the lease at the claim's expiry: a sweeper that dies mid-recovery is
-- replaced after claim_ttl. Atomic, so sweepers racing over the same leases each get a disjoint set.
-- No lease is taken for stalled within its own lease_ttl of this Redis's start as the primary (a
-- restart, or a failover to a replica: a new replication id): the live workers renewed it where
-- they could (nowhere, during the outage; the old primary, until they found the new one) and get
-- one whole lease_ttl to renew it here.
-- KEYS: due, fence, workers, serving
-- ARGV: limit, claim_ttl, sweeper, key prefix
-- Returns {claims, dead_workers}; a claim is {job, 'claimed', record, checkpoint|nil} or
-- {job, 'corrupt', why}; a dead worker is {name, info}.
local now = now_s()
local limit, claim_ttl, sweeper, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local claims = {}

-- Since when this Redis has served as the primary. `serving` holds the replication id seen, since
-- when, and when it was last checked; a new id (a failover, a restart) serves from the first check
-- that sees it, a restart at the latest from the start itself. Checked when a lease looks stalled,
-- and by the first claim a second (whichever sweeper makes it), so that a failover is noted within
-- a second of it, not at the first stall after it.
local serving = nil
local function serving_since()
  if serving then return serving end
  local uptime = uptime_s()
  local replid = replication_id()
  local stored = redis.call('GET', KEYS[4])
  local since = nil
  if stored then
    local id, at = string.match(stored, '^(%S*) (%S+)')
    if id == replid then since = tonumber(at) end
  end
  since = since or (stored and now or now - uptime)
  redis.call('SET', KEYS[4], replid .. ' ' .. fmt(since) .. ' ' .. fmt(now))
  serving = math.max(since, now - uptime)
  return serving
end
local checked = tonumber(string.match(redis.call('GET', KEYS[4]) or '', '^%S* %S+ (%S+)$') or '')
if not checked or now - checked >= 1 then serving_since() end

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'LIMIT', 0, limit)
for _, job in ipairs(ids) do
  local key = prefix .. ':lease:' .. job
  local kind = key_type(key)
  local reason, problem, worker = nil, nil, nil
  if kind ~= 'hash' then
    problem = kind == 'none' and 'lease record is missing' or ('lease key holds a ' .. kind)
  else
    local r = redis.call('HMGET', key, 'state', 'expires', 'hard_deadline', 'progress_deadline',
      'overdue_grace', 'claim_expires', 'reason', 'abandoned', 'republish_at', 'worker', 'lease_ttl')
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
          -- when no sweeper looked until the hard limit had passed as well; unless this Redis
          -- became the primary too recently for its worker to have renewed it here.
          local held_until = serving_since() + (tonumber(r[11]) or 0)
          if held_until > now then
            redis.call('ZADD', KEYS[1], fmt(held_until), job)
          else
            reason = 'stalled'
          end
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
  local info_key = prefix .. ':worker:' .. name
  local described = key_type(info_key) == 'hash'
  -- A worker, like a lease, gets its own presence TTL after a restart or a failover to renew here.
  local held_until = serving_since() + (described and tonumber(redis.call('HGET', info_key, 'ttl')) or 0)
  if held_until > now then
    redis.call('ZADD', KEYS[3], fmt(held_until), name)
  else
    redis.call('ZREM', KEYS[3], name)
    dead[#dead + 1] = {name, described and redis.call('HGETALL', info_key) or {}}
    redis.call('DEL', info_key)
  end
end
return {claims, dead}
