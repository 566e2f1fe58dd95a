local raw = redis.call('GET', FORCED)
local rec = decode(raw)
local now = now_ms()
if not rec or now < lapse_ms(rec, A.grace_ms) then return cjson.encode({previous = ''}) end
redis.call('DEL', FORCED)
local ramp = start_ramp(now, rec, 'lapsed', A.ramp)
return cjson.encode({previous = raw, ramp = ramp or '', notice = notify({forced = '', ramp = ramp})})
