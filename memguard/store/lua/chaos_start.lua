-- An operator's experiment (memguard chaos start): A.fault, A.percent and A.seconds, checked by
-- memguard.ops.actions with memguard.domain.chaos's parsers; A.trip, A.by. It replaces one in
-- progress (previous, in the reply).
local now = now_ms()
local previous = redis.call('GET', CHAOS)
local c = {id = redis.sha1hex('chaos:' .. now .. ':' .. cjson.encode(A.by)), fault = A.fault,
           percent = A.percent, start = now / 1000, seconds = A.seconds, trip = A.trip, by = A.by}
local raw = cjson.encode(c)
keep_chaos(raw, now + A.seconds * 1000)
return cjson.encode({chaos = raw, previous = previous or '', notice = notify({chaos = raw})})
