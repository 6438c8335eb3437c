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

local function key_type(key)
  return redis.call('TYPE', key).ok
end
