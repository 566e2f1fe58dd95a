local repaired = false
local count = redis.pcall('INCR', COUNTER)
if type(count) == 'table' then
  redis.call('DEL', COUNTER)
  count = redis.call('INCR', COUNTER)
  repaired = true
end
if count == 1 or redis.call('PTTL', COUNTER) < 0 then redis.call('PEXPIRE', COUNTER, A.window_ms) end
local change = {count = count, ttl = redis.call('PTTL', COUNTER)}
local enough = quorum_met(FAILING_HOSTS, A.quorum, A.instance, change.ttl)
local status, raw, previous = 'counted', '', ''
if count >= A.threshold and not enough then
  status = 'quorum'
elseif count >= A.threshold then
  raw = redis.call('GET', FORCED)
  if decode(raw) then
    status = 'held'
  elseif not A.auto then
    status, raw = 'disabled', ''
  else
    previous = raw or ''
    raw, change.ramp = trip(now_ms(), 'consecutive_failures', A.hold_ms, A.grace_ms, A.by, A.cap_ms, A.jitter)
    change.forced, status = raw, 'forced'
  end
end
return cjson.encode({status = status, count = count, record = raw or '', repaired = repaired,
                     previous = previous, notice = notify(change)})
