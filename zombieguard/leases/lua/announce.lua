-- A worker's presence connection is subscribed to its channel (zombieguard/worker/presence.py):
-- watch the worker from now on. When no watcher has looked at this integration yet, the node's
-- replication id is noted as presence.lua's state (never looked, serving since 0): a failover, or a
-- Cluster's slot moved, before the first look then starts presence.lua's hold on the new node, as
-- any later one does, while the worker's connection may still be on the former node.
-- KEYS: presence (the integration's workers with a presence connection), absent
-- ARGV: worker
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HEXISTS', KEYS[2], '') == 0 then
  local replid = replication_id()
  redis.call('HSET', KEYS[2], '', '0 ' .. replid .. ' 0')
end
return 'ok'
