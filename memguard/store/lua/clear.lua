local raw = redis.call('GET', FORCED)
redis.call('DEL', LATENCY, FAILING_HOSTS, AUTH_HOSTS, OUTCOMES)
if redis.call('DEL', FORCED, COUNTER) == 0 then return cjson.encode({previous = ''}) end
return cjson.encode({previous = raw or '', notice = notify({forced = '', count = 0, ttl = -2})})
