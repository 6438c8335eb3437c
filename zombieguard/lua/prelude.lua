-- Shared by every zombieguard script. All lease timing uses the Redis server's clock: workers on
-- different hosts disagree, the server does not disagree with itself.
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

-- The moment a sweeper must look at a running lease: its expiry, or a hard / progress deadline plus
-- the grace the worker gets to stop the job itself, whichever comes first.
local function due_score(expires, hard_deadline, progress_deadline, grace)
  local d = expires
  if hard_deadline and hard_deadline + grace < d then d = hard_deadline + grace end
  if progress_deadline and progress_deadline + grace < d then d = progress_deadline + grace end
  return d
end

-- A running lease that lapsed (its worker stopped renewing it: frozen, or cut off from Redis) before
-- it was overdue, and is overdue now. A sweeper takes it for a stall (claim.lua), so its worker must
-- not renew it and then stop the job as timed out: it is given up as stalled instead (due now, for
-- a sweeper to recover), and the renewal or beat is refused. True when so.
local function give_up_lapsed(key, due_key, job, now)
  local r = redis.call('HMGET', key, 'expires', 'hard_deadline', 'overdue_grace')
  local expires, hard, grace = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
  if not (expires and hard and grace) or expires > now then return false end
  if hard + grace <= expires or hard + grace > now then return false end
  redis.call('HSET', key, 'abandoned', 'stalled')
  redis.call('ZADD', due_key, fmt(now), job)
  return true
end

local function key_type(key)
  return redis.call('TYPE', key).ok
end
