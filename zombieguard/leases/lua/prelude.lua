-- Shared by every zombieguard script. All lease timing uses the Redis server's clock: workers on
-- different hosts disagree, the server does not disagree with itself.
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.6f', x)
end

-- Seconds since this Redis started, and its replication id: a new id is a restart or a failover to
-- a replica (which keeps its uptime), or, on a Cluster, another node serving the slot.
local function uptime_s()
  return tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)')) or 0
end

local function replication_id()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
end

-- The moment a sweeper must look at a running lease: its expiry, or a hard / progress deadline plus
-- the grace the worker gets to stop the job itself, whichever comes first.
local function due_score(expires, hard_deadline, progress_deadline, grace)
  local d = expires
  if hard_deadline and hard_deadline + grace < d then d = hard_deadline + grace end
  if progress_deadline and progress_deadline + grace < d then d = progress_deadline + grace end
  return d
end

-- Why a running lease is given up, or nil: its worker gave it up (abandon.lua, with the reason a
-- sweeper acts on), or it lapsed (its worker stopped renewing it: frozen, or cut off from Redis)
-- before it was overdue and is overdue now. A sweeper takes the latter for a stall (claim.lua), so
-- its worker must not renew it and then stop the job as timed out: it is given up as stalled here
-- (due now, for a sweeper to recover). Either way the lease is the sweeper's: its attempt's
-- renewals and beats are refused, and so is any end but completion of one given up as stalled.
local function given_up(key, due_key, job, now)
  local r = redis.call('HMGET', key, 'expires', 'hard_deadline', 'overdue_grace', 'abandoned')
  if r[4] then return r[4] end
  local expires, hard, grace = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
  if not (expires and hard and grace) or expires > now then return nil end
  if hard + grace <= expires or hard + grace > now then return nil end
  redis.call('HSET', key, 'abandoned', 'stalled')
  redis.call('ZADD', due_key, fmt(now), job)
  return 'stalled'
end

-- Whether a lease record (its state and token) stands where the attempt of token ``mine`` should be:
-- a sweeper requeued the job (queued, under the older token of its claim), the attempt's acquire
-- took it, and that write was lost (a primary failed over before any replica had it). No other
-- delivery took the job since, or the record would be running under a newer token. The attempt's
-- lease is missing: its worker writes it again (reestablish.lua).
local function acquire_lost(state, token, mine)
  local held, own = tonumber(token), tonumber(mine)
  return state == 'queued' and held ~= nil and own ~= nil and held < own
end

local function key_type(key)
  return redis.call('TYPE', key).ok
end

-- The set of the jobs a worker acquired (see presence.lua), from a lease key: every key of ours is
-- '<prefix>:lease:<job>' or '<prefix>:held:<worker>'.
local function held_key(lease_key, job, worker)
  return string.sub(lease_key, 1, #lease_key - #job - #':lease:') .. ':held:' .. worker
end
