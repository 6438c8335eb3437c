-- A sweeper finishes what it claimed: the job was requeued as a new attempt, failed, or dead-lettered.
-- KEYS: lease, due, dlq, dlq_index
-- ARGV: claim token, job, outcome ('queued' | 'failed' | 'dead_lettered' | 'ended'), history line,
--       tombstone_ttl_ms, state_ttl_ms, dead-letter entry ('' unless dead-lettered),
--       dlq max entries, dlq max age (s), key prefix,
--       republish_after (s; 'queued' only: look again then, in case no worker starts it; '' never)
-- An empty history line adds none (a re-publish of a queued job ends no attempt).
-- Returns {'ok', now, stalls} or {'lost'} when another sweeper took the claim over.
if key_type(KEYS[1]) ~= 'hash' then return {'lost'} end
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'stalls', 'reason', 'history')
if r[1] ~= 'recovering' or r[2] ~= ARGV[1] then return {'lost'} end
local now = now_s()
local job, outcome, prefix = ARGV[2], ARGV[3], ARGV[10]
local stalls = tonumber(r[3]) or 0
if r[4] == 'stalled' then stalls = stalls + 1 end
if r[4] == 'unstarted' then redis.call('HINCRBY', KEYS[1], 'republished', 1) end
redis.call('ZREM', KEYS[2], job)
redis.call('HSET', KEYS[1], 'stalls', stalls, 'ended', fmt(now))
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'history', (r[5] or '') .. ARGV[4] .. '\n') end
redis.call('HDEL', KEYS[1], 'claimed_by', 'claimed_at', 'claim_expires', 'verdict')
if outcome == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  local after = tonumber(ARGV[11])
  if after then
    redis.call('HSET', KEYS[1], 'republish_at', fmt(now + after))
    redis.call('ZADD', KEYS[2], fmt(now + after), job)
  end
else
  redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', outcome)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if outcome == 'dead_lettered' then
  redis.call('HSET', KEYS[3], job, ARGV[7])
  redis.call('ZADD', KEYS[4], fmt(now), job)
  local function drop(ids)
    for _, id in ipairs(ids) do
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      redis.call('DEL', prefix .. ':checkpoint:' .. id)
    end
  end
  drop(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(now - tonumber(ARGV[9]))))
  local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[8])
  if excess > 0 then drop(redis.call('ZRANGE', KEYS[4], 0, excess - 1)) end
end
return {'ok', fmt(now), tostring(stalls)}
