local now = now_ms()
if A.heartbeat_ms > 0 then redis.call('SET', HEARTBEAT, now, 'PX', A.heartbeat_ms) end  -- 0: a manual probe
local raw = redis.call('GET', FORCED)
if not raw then
  -- No hold: end a ramp that has run its course (once fleet-wide: the first tick after its end),
  -- and remove one that is not memguard's (reads already ignore it).
  local ramp_raw = redis.call('GET', RAMP)
  local r = decode_ramp(ramp_raw, now)
  if r == false then
    redis.call('DEL', RAMP)
    table.insert(REPAIRED, RAMP .. ' was not a ramp record')
    return cjson.encode({status = 'idle', notice = notify({ramp = ''})})
  end
  if r and now >= (r.start + r.seconds) * 1000 then
    redis.call('DEL', RAMP)
    return cjson.encode({status = 'idle', completed = ramp_raw, notice = notify({ramp = ''})})
  end
  return cjson.encode({status = 'idle'})
end
local rec = decode(raw)
if rec == false then
  redis.call('DEL', FORCED)
  return cjson.encode({status = 'corrupt', record = raw, notice = notify({forced = ''})})
end
if now < rec['until'] * 1000 then return cjson.encode({status = 'held', record = raw}) end
if redis.call('PTTL', LOCK) == -1 then  -- memguard's lock always expires: this one is not memguard's
  redis.call('DEL', LOCK)
  table.insert(REPAIRED, LOCK .. ' had no expiry')
end
if redis.call('SET', LOCK, A.token, 'NX', 'PX', A.lock_ms) then
  return cjson.encode({status = 'claimed', record = raw, ident = ident(rec)})
end
return cjson.encode({status = 'busy', record = raw})
