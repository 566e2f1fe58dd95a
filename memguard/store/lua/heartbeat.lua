-- The fleet's liveness heartbeat, sent by one process per round: whoever's quiet-timer fires
-- first takes LOCK for A.ttl_ms and publishes; the others, firing within that time (their
-- notice of the heartbeat still on its way), publish nothing. So a round costs the fleet one
-- message per process, however many timers fired at once.
if not redis.call('SET', LOCK, '1', 'NX', 'PX', A.ttl_ms) then return cjson.encode({sent = false}) end
redis.call('PUBLISH', A.channel, 'heartbeat')
-- The primary's time, on a channel of its own: views on replicas (MEMGUARD_VIEW_URLS) measure
-- their replica's lag by it. A view of the primary does not subscribe, so it costs them nothing,
-- and a process of an earlier release never sees it.
local t = redis.call('TIME')
redis.call('PUBLISH', A.clock, string.format('%s.%06d', t[1], tonumber(t[2])))
return cjson.encode({sent = true})
