local raw = redis.call('GET', FORCED)
local rec = decode(raw)
if not rec or now_ms() < lapse_ms(rec, A.grace_ms) then return cjson.encode({previous = ''}) end
redis.call('DEL', FORCED)
return cjson.encode({previous = raw, notice = notify({forced = ''})})
