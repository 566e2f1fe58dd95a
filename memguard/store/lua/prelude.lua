-- Shared by the transition scripts. Each script is this prelude and its own body, after a
-- header (written by memguard.store.scripts) that decodes the one JSON argument into A and
-- names the script's keys: FORCED, COUNTER, VERSION, ... as its ScriptSpec lists them.

-- The quorum policy: note this host, and say whether enough distinct hosts are in the set.
local function quorum_met(set, quorum, instance, window_ms)
  if quorum <= 1 then return true end
  redis.call('SADD', set, instance)
  if redis.call('PTTL', set) < 0 then redis.call('PEXPIRE', set, window_ms) end
  return redis.call('SCARD', set) >= quorum
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The validity rule, the same as memguard.domain.record.record_problem: a JSON object with
-- mode 'write_only', a finite number until at most LONGEST_AHEAD_MS ahead of the Redis clock,
-- and optional fields of their own types (JSON null counts as absent).
local LONGEST_AHEAD_MS = 86405000  -- record.LONGEST_AHEAD_S * 1000
local MAX_REASON_BYTES = 200  -- record.MAX_REASON_BYTES

local function absent(v) return v == nil or v == cjson.null end
local function finite(v) return type(v) == 'number' and v == v and v > -math.huge and v < math.huge end

-- nil: no record; false: a value that is not a valid record; else the record.
local function decode(raw)
  if not raw then return nil end
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or rec.mode ~= 'write_only' then return false end
  local u = rec['until']
  if not finite(u) or u * 1000 > now_ms() + LONGEST_AHEAD_MS then return false end
  for _, name in ipairs({'forced_at', 'lapse_at', 'since', 'hold_seconds'}) do
    if not absent(rec[name]) and not finite(rec[name]) then return false end
  end
  local h = rec.holds
  if not absent(h) and not (finite(h) and h >= 1 and math.floor(h) == h) then return false end
  for _, name in ipairs({'reason', 'trigger'}) do
    local r = rec[name]
    if not absent(r) and not (type(r) == 'string' and #r <= MAX_REASON_BYTES) then return false end
  end
  -- an object; cjson gives an empty array as an empty table too, so that one passes
  if not absent(rec.by) and (type(rec.by) ~= 'table' or rec.by[1] ~= nil) then return false end
  if not absent(rec.id) and type(rec.id) ~= 'string' then return false end
  return rec
end

local function ident(rec)
  if type(rec.id) == 'string' then return rec.id end
  return tostring(rec.forced_at) .. ':' .. tostring(rec['until'])
end

local function lapse_ms(rec, grace_ms)
  if type(rec.lapse_at) == 'number' then return rec.lapse_at * 1000 end
  return rec['until'] * 1000 + grace_ms
end

-- The notice of a change: forced = the new record ('' when removed), count/ttl = the
-- counter, when changed. Bumps the version and publishes it on A.channel; returns it.
local function notify(change)
  local v = redis.pcall('INCR', VERSION)
  if type(v) ~= 'number' then  -- not a whole number: start the version again
    redis.call('DEL', VERSION)
    v = redis.call('INCR', VERSION)
    table.insert(REPAIRED, VERSION .. ' was not a whole number')
  end
  change.v = v
  change.now = now_ms()
  local notice = cjson.encode(change)
  redis.call('PUBLISH', A.channel, notice)
  return notice
end

-- Writes a new record at FORCED; a failed probe's or ramp's re-force (prev given: the record or
-- the ramp) keeps its run. A ramp's failure names its trigger.
local function write_record(now, reason, hold_ms, grace_ms, by, prev, trigger)
  local holds, since = 1, now / 1000
  if prev and (reason == 'probe_failed' or reason == 'ramp_failed') then
    holds = (finite(prev.holds) and prev.holds or 1) + 1
    since = finite(prev.since) and prev.since or finite(prev.forced_at) and prev.forced_at or since
  end
  local by_json = cjson.encode(by)
  local rec = {mode = 'write_only', reason = reason, forced_at = now / 1000, since = since,
               hold_seconds = hold_ms / 1000, lapse_at = (now + hold_ms + grace_ms) / 1000,
               holds = holds, by = by, id = redis.sha1hex(now .. by_json .. reason), trigger = trigger}
  rec['until'] = (now + hold_ms) / 1000
  local raw = cjson.encode(rec)
  -- Safety net only: readers or the prober normally end the record (and log it) first.
  redis.call('SET', FORCED, raw, 'PXAT', now + hold_ms + 2 * grace_ms)
  return raw
end

-- The recovery ramp (memguard.domain.ramp). Its validity rule, the same as ramp_problem there:
-- a JSON object with id a string of 1 to MAX_ID_BYTES, start a finite number at most
-- CLOCK_SKEW_MS ahead of the Redis clock, seconds in (0, MAX_RAMP_S], min_percent in [0, 100],
-- aggression in [0.1, 10], and optional fields of their own types (JSON null counts as absent).
local MAX_RAMP_S, MAX_ID_BYTES, CLOCK_SKEW_MS = 3600, 64, 5000  -- ramp.MAX_RAMP_SECONDS, ...
local RAMP_KEPT_MS = 600000  -- the key outlives its end by this: a safety net, the prober ends it

local function within(v, lo, hi) return finite(v) and v >= lo and v <= hi end

-- nil: no ramp; false: a value that is not a valid ramp; else the ramp.
local function decode_ramp(raw, now)
  if not raw then return nil end
  local ok, r = pcall(cjson.decode, raw)
  if not ok or type(r) ~= 'table' then return false end
  if type(r.id) ~= 'string' or #r.id < 1 or #r.id > MAX_ID_BYTES then return false end
  if not finite(r.start) or r.start * 1000 > now + CLOCK_SKEW_MS then return false end
  if not within(r.seconds, 0, MAX_RAMP_S) or r.seconds <= 0 then return false end
  if not within(r.min_percent, 0, 100) or not within(r.aggression, 0.1, 10) then return false end
  local h = r.holds
  if not absent(h) and not (finite(h) and h >= 1 and math.floor(h) == h) then return false end
  if not absent(r.since) and not finite(r.since) then return false end
  for _, name in ipairs({'reason', 'previous_reason'}) do
    local t = r[name]
    if not absent(t) and not (type(t) == 'string' and #t <= MAX_REASON_BYTES) then return false end
  end
  return r
end

-- The ramp in progress at now (ms), or nil: a ramp past its end is complete.
local function active_ramp(now)
  local r = decode_ramp(redis.call('GET', RAMP), now)
  if r and now < (r.start + r.seconds) * 1000 then return r end
  return nil
end

-- Removes the ramp; '' if there was one (the notice's ramp field), else nil.
local function end_ramp()
  if redis.call('DEL', RAMP) == 1 then return '' end
  return nil
end

-- A hold (rec, when valid) ended by reason: start a ramp if asked for one (spec: its seconds,
-- min_percent and aggression), else end any ramp. No valid hold ended: a ramp in progress stays.
-- The notice's ramp field: the new ramp, '' if one was removed, or nil.
local function start_ramp(now, rec, reason, spec)
  if type(spec) ~= 'table' then return end_ramp() end
  if not rec then return nil end
  local r = {id = redis.sha1hex('ramp:' .. now .. ':' .. ident(rec)), start = now / 1000,
             seconds = spec.seconds, min_percent = spec.min_percent, aggression = spec.aggression,
             holds = finite(rec.holds) and rec.holds or 1, reason = reason,
             since = finite(rec.since) and rec.since or finite(rec.forced_at) and rec.forced_at or now / 1000,
             previous_reason = type(rec.reason) == 'string' and rec.reason or 'unknown'}
  local raw = cjson.encode(r)
  redis.call('SET', RAMP, raw, 'PXAT', now + r.seconds * 1000 + RAMP_KEPT_MS)
  return raw
end

-- An automatic trigger's new record. During a ramp (the half-open state) it is the ramp's
-- failure: reason ramp_failed with the trigger named, holds + 1 and the back-off growing as
-- after a failed probe (cap_ms, jitter). Returns the record and the notice's ramp field.
local function trip(now, reason, hold_ms, grace_ms, by, cap_ms, jitter)
  local r = active_ramp(now)
  local new
  if r then
    local hold = math.min(cap_ms, hold_ms * 2 ^ (finite(r.holds) and r.holds or 1))
    new = write_record(now, 'ramp_failed', math.floor(hold * jitter), grace_ms, by, r, reason)
  else
    new = write_record(now, reason, hold_ms, grace_ms, by, nil)
  end
  return new, end_ramp()
end

-- A game day's experiment (memguard.domain.chaos). Its validity rule, the same as chaos_problem
-- there: a JSON object with id a string of 1 to MAX_ID_BYTES, fault one of timeout, auth,
-- error:5xx or latency:<1-60000>ms, percent in (0, 100], start a finite number at most
-- CLOCK_SKEW_MS ahead of the Redis clock, seconds in [5, 3600], and optional trip (a boolean)
-- and by (an object). The key outlives its end by CHAOS_KEPT_MS: a safety net, the prober ends it.
local CHAOS_MIN_S, CHAOS_MAX_S, CHAOS_KEPT_MS = 5, 3600, 60000  -- chaos.MIN_SECONDS, MAX_SECONDS

local function fault_ok(f)
  if type(f) ~= 'string' then return false end
  if f == 'timeout' or f == 'auth' or f:match('^error:5%d%d$') then return true end
  local ms = f:match('^latency:([1-9]%d?%d?%d?%d?)ms$')
  return ms ~= nil and tonumber(ms) <= 60000
end

-- nil: no experiment; false: a value that is not a valid one; else the experiment.
local function decode_chaos(raw, now)
  if not raw then return nil end
  local ok, c = pcall(cjson.decode, raw)
  if not ok or type(c) ~= 'table' then return false end
  if type(c.id) ~= 'string' or #c.id < 1 or #c.id > MAX_ID_BYTES then return false end
  if not fault_ok(c.fault) then return false end
  if not finite(c.percent) or c.percent <= 0 or c.percent > 100 then return false end
  if not finite(c.start) or c.start * 1000 > now + CLOCK_SKEW_MS then return false end
  if not within(c.seconds, CHAOS_MIN_S, CHAOS_MAX_S) then return false end
  if not absent(c.trip) and type(c.trip) ~= 'boolean' then return false end
  if not absent(c.by) and (type(c.by) ~= 'table' or c.by[1] ~= nil) then return false end
  return c
end

-- Writes an experiment ending at end_ms; its key outlives that by CHAOS_KEPT_MS.
local function keep_chaos(raw, end_ms)
  redis.call('SET', CHAOS, raw, 'PXAT', end_ms + CHAOS_KEPT_MS)
end

-- Removes the experiment: the notice's chaos field ('' if there was one, else nil), and the
-- value it removed.
local function end_chaos()
  local raw = redis.call('GET', CHAOS)
  if raw and redis.call('DEL', CHAOS) == 1 then return '', raw end
  return nil, nil
end
