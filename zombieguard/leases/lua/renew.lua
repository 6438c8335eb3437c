-- Renew every lease one worker holds, and the worker's own presence: one round trip per interval.
-- KEYS: due, workers, lease_1 .. lease_n
-- ARGV: worker, worker_ttl, job_1, token_1, processes_1, .. job_n, token_n, processes_n
-- (processes: how many processes run under the job now; '' when not known, the lease keeps its own)
-- Returns one code per lease: 'ok', 'lost' (another token or state, or given up: see given_up),
-- 'missing' (no record, or one its acquire should have replaced: see acquire_lost), 'corrupt'.
local now = now_s()
redis.call('ZADD', KEYS[2], fmt(now + tonumber(ARGV[2])), ARGV[1])
local out = {}
for i = 3, #KEYS do
  local j = i - 2
  local job, token, processes, key = ARGV[3 * j], ARGV[3 * j + 1], ARGV[3 * j + 2], KEYS[i]
  local code = 'lost'
  local kind = key_type(key)
  if kind == 'none' then
    code = 'missing'
  elseif kind ~= 'hash' then
    code = 'corrupt'
  else
    local r = redis.call('HMGET', key, 'state', 'token', 'lease_ttl', 'hard_deadline',
      'progress_deadline', 'overdue_grace')
    if r[1] == 'running' and r[2] == token then
      local ttl, grace = tonumber(r[3]), tonumber(r[6])
      if ttl == nil or grace == nil then
        code = 'corrupt'
      elseif given_up(key, KEYS[1], job, now) then
        code = 'lost'
      else
        local expires = now + ttl
        redis.call('HSET', key, 'renewed', fmt(now), 'expires', fmt(expires))
        if processes ~= '' then redis.call('HSET', key, 'processes', processes) end
        redis.call('ZADD', KEYS[1],
          fmt(due_score(expires, tonumber(r[4]), tonumber(r[5]), grace)), job)
        code = 'ok'
      end
    elseif acquire_lost(r[1], r[2], token) then
      code = 'missing'
    end
  end
  out[#out + 1] = code
end
return out
