-- The attempt ended in its worker: completed, failed, timed out, hung, stopped, or requeued (its own
-- message handed back to the broker: the attempt number steps back, so that the same delivery,
-- coming again, starts this attempt number again instead of being refused as stale).
-- KEYS: lease, due, checkpoint, completed (queue -> when a job of it last completed)
-- ARGV: token, job, outcome, reason, stack, tombstone_ttl_ms, queue, unless_adopted ('1', from a
--       process that wrote the lease on an execution's behalf: refuse, answering {'adopted'}, when
--       the lease passed to the execution, which records its own end; see acquire.lua)
-- A first attempt that completed leaves nothing behind. Any other end leaves a tombstone for
-- tombstone_ttl, so that a late redelivery of a superseded attempt is recognised as stale.
-- A lease given up as a stall (see given_up) is the sweeper's to recover: a failure (by its own
-- error or a limit) is refused; its completion, a stop asked for, or its own message handed back
-- are still taken.
-- Returns {'ok', now} or {'lost', state, token} or {'missing'} or {'corrupt', why} or {'adopted'}
local kind = key_type(KEYS[1])
if kind == 'none' then return {'missing'} end
if kind ~= 'hash' then return {'corrupt', 'lease key holds a ' .. kind} end
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'attempt', 'stalls', 'worker', 'started',
  'last_beat', 'last_progress', 'adopted', 'ended_processes')
if acquire_lost(r[1], r[2], ARGV[1]) then return {'missing'} end
if r[1] ~= 'running' or r[2] ~= ARGV[1] then return {'lost', r[1] or '', r[2] or ''} end
if ARGV[8] == '1' and r[9] then return {'adopted'} end
local now = now_s()
local outcome = ARGV[3]
local failure = outcome == 'failed' or outcome == 'timed_out' or outcome == 'hung'
if failure and given_up(KEYS[1], KEYS[2], ARGV[2], now) == 'stalled' then
  return {'lost', 'given up as stalled', r[2]}
end
redis.call('ZREM', KEYS[2], ARGV[2])
if r[5] then redis.call('SREM', held_key(KEYS[1], ARGV[2], r[5]), ARGV[2]) end
if outcome == 'completed' then
  redis.call('DEL', KEYS[3])
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[4], ARGV[7], fmt(now)) end
end
if outcome == 'completed' and tonumber(r[3]) == 1 and tonumber(r[4]) == 0 then
  redis.call('DEL', KEYS[1])
else
  local entry = {
    attempt = tonumber(r[3]), worker = r[5], started = tonumber(r[6]), ended = now,
    last_beat = tonumber(r[7]), last_progress = tonumber(r[8]), outcome = outcome,
    reason = ARGV[4],
  }
  if ARGV[5] ~= '' then entry.stack = ARGV[5] end
  if r[10] and r[10] ~= '' then
    local ended = {}
    for line in string.gmatch(r[10], '[^\n]+') do ended[#ended + 1] = line end
    entry.processes = ended
  end
  redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', outcome, 'reason', ARGV[4], 'ended', fmt(now))
  if outcome == 'requeued' then redis.call('HINCRBY', KEYS[1], 'attempt', -1) end
  redis.call('HSET', KEYS[1], 'history', (redis.call('HGET', KEYS[1], 'history') or '') .. cjson.encode(entry) .. '\n')
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {'ok', fmt(now)}
