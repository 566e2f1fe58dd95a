local now = now_ms()
if A.heartbeat_ms > 0 then redis.call('SET', HEARTBEAT, now, 'PX', A.heartbeat_ms) end  -- 0: a manual probe
-- An experiment past its end ends here (once fleet-wide: the first tick after it), and one that
-- is not memguard's is removed (reads already ignore it). Its change joins this reply's notice.
local change, chaos_ended, due = {}, nil, nil
local c = decode_chaos(redis.call('GET', CHAOS), now)
if c == false then
  change.chaos = end_chaos()
  table.insert(REPAIRED, CHAOS .. ' was not an experiment')
elseif c and now >= (c.start + c.seconds) * 1000 then
  change.chaos, chaos_ended = end_chaos()
elseif c then
  due = (c.start + c.seconds) * 1000
end
local function reply(t, more)
  for k, v in pairs(more or {}) do change[k] = v end
  if next(change) ~= nil then t.notice = notify(change) end
  t.chaos_ended = chaos_ended
  return cjson.encode(t)
end
local raw = redis.call('GET', FORCED)
if not raw then
  -- No hold: end a ramp that has run its course (once fleet-wide: the first tick after its end),
  -- and remove one that is not memguard's (reads already ignore it). ``due``: when a ramp or an
  -- experiment still running ends, the sooner (a named guard is ticked again then).
  local ramp_raw = redis.call('GET', RAMP)
  local r = decode_ramp(ramp_raw, now)
  if r == false then
    redis.call('DEL', RAMP)
    table.insert(REPAIRED, RAMP .. ' was not a ramp record')
    return reply({status = 'idle', due = due}, {ramp = ''})
  end
  if r and now >= (r.start + r.seconds) * 1000 then
    redis.call('DEL', RAMP)
    return reply({status = 'idle', completed = ramp_raw, due = due}, {ramp = ''})
  end
  if r then due = math.min(due or math.huge, (r.start + r.seconds) * 1000) end  -- the sooner
  return reply({status = 'idle', due = due})
end
local rec = decode(raw)
if rec == false then
  redis.call('DEL', FORCED)
  return reply({status = 'corrupt', record = raw}, {forced = ''})
end
if now < rec['until'] * 1000 then return reply({status = 'held', record = raw}) end
if redis.call('PTTL', LOCK) == -1 then  -- memguard's lock always expires: this one is not memguard's
  redis.call('DEL', LOCK)
  table.insert(REPAIRED, LOCK .. ' had no expiry')
end
if redis.call('SET', LOCK, A.token, 'NX', 'PX', A.lock_ms) then
  return reply({status = 'claimed', record = raw, ident = ident(rec)})
end
return reply({status = 'busy', record = raw})
