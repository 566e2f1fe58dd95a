local raw = redis.call('GET', FORCED)
local prev = decode(raw)
if A.auto and prev then return cjson.encode({status = 'held', record = raw}) end
if not quorum_met(AUTH_HOSTS, A.quorum, A.instance, A.window_ms) then
  return cjson.encode({status = 'quorum'})
end
local now = now_ms()
-- An operator's force never shortens a longer hold in place unless asked to (A.replace).
if prev and not A.replace and prev['until'] * 1000 > now + A.hold_ms then
  return cjson.encode({status = 'kept', record = raw})
end
local new, ramp, chaos, ended
if A.auto then
  new, ramp = trip(now, A.reason, A.hold_ms, A.grace_ms, A.by, A.cap_ms, A.jitter)
else  -- an operator's force starts a run of holds of its own, and ends any ramp and experiment
  new, ramp = write_record(now, A.reason, A.hold_ms, A.grace_ms, A.by, prev), end_ramp()
  chaos, ended = end_chaos()
end
return cjson.encode({status = 'forced', record = new, previous = raw or '', chaos_ended = ended,
                     notice = notify({forced = new, ramp = ramp, chaos = chaos})})
