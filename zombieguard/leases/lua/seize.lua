-- An operator stops a running job (zombieguard kill): its lease is claimed at once, whatever its
-- expiry. The new token fences the attempt off: its next renewal or write fails and its worker stops
-- it; the claimer fails the job. If the claimer dies mid-way, a sweeper takes the claim over after
-- claim_ttl with the same reason.
-- KEYS: lease, due, fence
-- ARGV: job, claimer, claim_ttl, who and why (kept in the lease)
-- Returns {'claimed', record} or {'not_running', state}
local kind = key_type(KEYS[1])
if kind ~= 'hash' then return {'not_running', kind} end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return {'not_running', state or ''} end
local now = now_s()
local ttl = tonumber(ARGV[3])
local token = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'recovering', 'token', token, 'reason', 'stopped', 'stopped_by', ARGV[4],
  'claimed_by', ARGV[2], 'claimed_at', fmt(now), 'claim_expires', fmt(now + ttl))
redis.call('ZADD', KEYS[2], fmt(now + ttl), ARGV[1])
return {'claimed', redis.call('HGETALL', KEYS[1])}
