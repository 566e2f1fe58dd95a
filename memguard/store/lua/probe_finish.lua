if redis.call('GET', LOCK) ~= A.token then return cjson.encode({status = 'lost'}) end
redis.call('DEL', LOCK)
local raw = redis.call('GET', FORCED)
local rec = decode(raw)
if not rec or ident(rec) ~= A.ident then return cjson.encode({status = 'superseded', record = raw or ''}) end
if A.success then  -- the hold ends, and the ramp (A.ramp) begins
  redis.call('DEL', FORCED, COUNTER, LATENCY, FAILING_HOSTS, AUTH_HOSTS, OUTCOMES)
  local ramp = start_ramp(now_ms(), rec, 'probe_success', A.ramp)
  return cjson.encode({status = 'restored', previous = raw, ramp = ramp or '',
                       notice = notify({forced = '', count = 0, ttl = -2, ramp = ramp})})
end
-- A failed probe doubles the hold of the one before, up to the cap, less the jitter.
local hold = math.min(A.cap_ms, A.hold_ms * 2 ^ (tonumber(rec.holds) or 1))
hold = math.floor(hold * A.jitter)
local new = write_record(now_ms(), 'probe_failed', hold, A.grace_ms, A.by, rec)
return cjson.encode({status = 'reforced', record = new, previous = raw,
                     notice = notify({forced = new, ramp = end_ramp()})})
