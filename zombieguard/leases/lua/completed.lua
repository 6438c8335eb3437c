-- Jobs of these queues completed before their leases were due to be written (Celery's lease_delay):
-- record each queue's last success, as the release of a completed attempt does.
-- KEYS: completed (queue -> when a job of it last completed), queues (queue -> adapter), adapters
-- ARGV: adapter, queue...
-- Returns the server time written.
local now = fmt(now_s())
redis.call('SADD', KEYS[3], ARGV[1])
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], now)
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
end
return now
