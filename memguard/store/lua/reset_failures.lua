if redis.call('DEL', COUNTER) == 0 then return cjson.encode({reset = false}) end
redis.call('DEL', FAILING_HOSTS)
return cjson.encode({reset = true, notice = notify({count = 0, ttl = -2})})
