-- An operator's clear: a valid record ends with a ramp (A.ramp), or at once without one; with no
-- ramp asked, a ramp in progress ends too (memguard clear --no-ramp), else it runs on. An
-- experiment (memguard chaos) ends either way.
local raw = redis.call('GET', FORCED)
local rec = decode(raw)
redis.call('DEL', LATENCY, FAILING_HOSTS, AUTH_HOSTS, OUTCOMES)
local removed = redis.call('DEL', FORCED, COUNTER)
local ramp = start_ramp(now_ms(), rec, 'manual_clear', A.ramp)
local chaos, ended = end_chaos()
if removed == 0 and ramp == nil and chaos == nil then return cjson.encode({previous = ''}) end
return cjson.encode({previous = raw or '', ramp = ramp, chaos_ended = ended,
                     notice = notify({forced = '', count = 0, ttl = -2, ramp = ramp, chaos = chaos})})
