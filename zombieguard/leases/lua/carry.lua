-- A worker gave an attempt up on a Sentinel service's primary that was failed over before any
-- replica had the write: the lease, as that former primary held it once given up, is written on
-- the new primary, unless another attempt or a sweeper holds the job there.
-- KEYS: lease, due, fence, adapters, held (the jobs the worker acquired)
-- ARGV: token, job, then the lease's field / value pairs
-- Returns {'ok'} or {'lost', state, token} or {'corrupt', why}
local carried = {}
for i = 3, #ARGV, 2 do carried[ARGV[i]] = ARGV[i + 1] end
local kind = key_type(KEYS[1])
if kind ~= 'none' and kind ~= 'hash' then return {'corrupt', 'lease key holds a ' .. kind} end
if kind == 'hash' then
  -- The same attempt: its token, worker and start. The fencing counter of a promoted replica may
  -- be behind the former primary's, so a token alone may name another attempt here.
  local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'worker', 'started')
  local same = r[1] == 'running' and r[2] == ARGV[1] and r[3] == carried.worker and r[4] == carried.started
  -- Or the queued record the attempt's acquire had replaced there, that write lost too.
  if not (same or acquire_lost(r[1], r[2], ARGV[1])) then
    return {'lost', r[1] or '', r[2] or ''}
  end
  redis.call('DEL', KEYS[1])
end
local token = tonumber(ARGV[1])
-- The fencing counter may have been lost too: never hand out this token, or an older one, again.
if (tonumber(redis.call('GET', KEYS[3])) or 0) < token then redis.call('SET', KEYS[3], token) end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
if carried.adapter then redis.call('SADD', KEYS[4], carried.adapter) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'expires'), ARGV[2])
redis.call('SADD', KEYS[5], ARGV[2])
return {'ok'}
