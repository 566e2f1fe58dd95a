-- The fleet's liveness heartbeat, sent by one process per round: whoever's quiet-timer fires
-- first takes LOCK for A.ttl_ms and publishes; the others, firing within that time (their
-- notice of the heartbeat still on its way), publish nothing. So a round costs the fleet one
-- message per process, however many timers fired at once.
if not redis.call('SET', LOCK, '1', 'NX', 'PX', A.ttl_ms) then return cjson.encode({sent = false}) end
redis.call('PUBLISH', A.channel, 'heartbeat')
return cjson.encode({sent = true})
