-- A look at one integration's workers' presence connections (zombieguard/worker/presence.py). Each
-- worker keeps a connection subscribed to a channel of its own; when the worker's process dies, the
-- kernel closes its sockets and the channel loses its subscriber at once. A frozen worker keeps its
-- connection: only its leases' expiry tells it apart from a live one.
-- A worker whose channel had no subscriber at a look, and still none at a look `grace` seconds or
-- more later (without a subscriber seen in between), is dead: its running leases are given up as
-- stalled, due now for a sweeper to recover, and it leaves the registry. A live worker whose
-- connection alone closed subscribes again well within `grace`. Within `restart_grace` of Redis's
-- start, or of a failover to it, nothing is decided, only noted: it closed every connection, and
-- the live workers are subscribing again. Nor after a gap between two looks longer than `grace`.
-- Only as many sweepers as there are watcher keys look (one seat each, kept while they look, lost
-- `watcher_ttl` after they stop); the others answer 'standby' at once.
-- KEYS: presence (the integration's workers with a presence connection), absent (worker -> since
--       when its channel has no subscriber), workers, watcher_1 .. watcher_n
-- ARGV: sweeper, watcher_ttl_ms, grace, restart_grace, prefix
-- Returns {'standby'} or {'watching', workers looked at, dead...}; a dead worker is
-- {name, info, leases given up}.
local sweeper = ARGV[1]
local seated = false
for i = 4, #KEYS do
  if redis.call('GET', KEYS[i]) == sweeper then
    redis.call('SET', KEYS[i], sweeper, 'PX', ARGV[2])
    seated = true
    break
  end
end
if not seated then
  for i = 4, #KEYS do
    if redis.call('SET', KEYS[i], sweeper, 'NX', 'PX', ARGV[2]) then
      seated = true
      break
    end
  end
end
if not seated then return {'standby'} end

local now = now_s()
local grace, prefix, restart_grace = tonumber(ARGV[3]), ARGV[5], tonumber(ARGV[4])
local uptime = uptime_s()
local replid = replication_id()
local absent = {}
local raw = redis.call('HGETALL', KEYS[2])
for i = 1, #raw, 2 do
  if raw[i] ~= '' then absent[raw[i]] = tonumber(raw[i + 1]) end
end
-- The field '' (no worker is named '') holds when the last look was, the primary's replication id
-- then, and since when this primary has served the data. A new replication id is a failover (a
-- replica promoted: it keeps its uptime) or a restart: either closed every connection, and the
-- live workers need restart_grace to reach this primary, as after Redis's own start.
local state = redis.call('HGET', KEYS[2], '')
local looked, seen_replid, serving = nil, nil, nil
if state then
  local a, b, c = string.match(state, '^(%S+) (%S*) (%S+)$')
  looked, seen_replid, serving = tonumber(a), b, tonumber(c)
end
if not state then
  serving = 0  -- the first look of all: only a restart (its uptime) or a failover holds decisions
elseif not serving or seen_replid ~= replid then
  serving = now
end
local deciding = uptime >= restart_grace and now - serving >= restart_grace
-- After a gap longer than `grace` without a look, nobody knows whether an absent worker came back
-- in between: each is noted absent from now.
if not looked or now - looked > grace then
  deciding = false
  for name, _ in pairs(absent) do
    redis.call('HSET', KEYS[2], name, fmt(now))
    absent[name] = now
  end
end
redis.call('HSET', KEYS[2], '', fmt(now) .. ' ' .. replid .. ' ' .. fmt(serving))

local function bury(name)
  local given = 0
  local held = prefix .. ':held:' .. name
  for _, job in ipairs(redis.call('SMEMBERS', held)) do
    local key = prefix .. ':lease:' .. job
    if key_type(key) == 'hash' then
      local r = redis.call('HMGET', key, 'state', 'worker', 'abandoned', 'adapter')
      if r[1] == 'running' and r[2] == name and not r[3] and r[4] then
        redis.call('HSET', key, 'expires', fmt(now), 'abandoned', 'stalled', 'worker_gone', fmt(now))
        redis.call('ZADD', prefix .. ':due:' .. r[4], fmt(now), job)
        given = given + 1
      end
    end
  end
  redis.call('DEL', held)
  redis.call('SREM', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
  redis.call('ZREM', KEYS[3], name)
  local info_key = prefix .. ':worker:' .. name
  local info = key_type(info_key) == 'hash' and redis.call('HGETALL', info_key) or {}
  redis.call('DEL', info_key)
  return {name, info, given}
end

local names = redis.call('SMEMBERS', KEYS[1])
local dead = {}
local batch = 500
for first = 1, #names, batch do
  local channels = {}
  for i = first, math.min(first + batch - 1, #names) do
    channels[#channels + 1] = prefix .. ':alive:' .. names[i]
  end
  local counts = redis.call('PUBSUB', 'NUMSUB', unpack(channels))
  for j = 2, #counts, 2 do
    local name = names[first + j / 2 - 1]
    local since = absent[name]
    if counts[j] > 0 then
      if since then redis.call('HDEL', KEYS[2], name) end
    elseif not since then
      redis.call('HSET', KEYS[2], name, fmt(now))
    elseif deciding and since + grace <= now then
      dead[#dead + 1] = bury(name)
    end
  end
end
return {'watching', #names, unpack(dead)}
