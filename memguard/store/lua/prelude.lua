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

-- nil: no record; false: a value memguard cannot read; else the record.
local function decode(raw)
  if not raw then return nil end
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and rec.mode == 'write_only'
     and type(rec['until']) == 'number' then
    return rec
  end
  return false
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
  change.v = redis.call('INCR', VERSION)
  change.now = now_ms()
  local notice = cjson.encode(change)
  redis.call('PUBLISH', A.channel, notice)
  return notice
end

-- Writes a new record at FORCED; a failed probe's re-force (prev given) keeps its run.
local function write_record(now, reason, hold_ms, grace_ms, by, prev)
  local holds, since = 1, now / 1000
  if prev and reason == 'probe_failed' then
    holds = (tonumber(prev.holds) or 1) + 1
    since = tonumber(prev.since) or tonumber(prev.forced_at) or since
  end
  local by_json = cjson.encode(by)
  local rec = {mode = 'write_only', reason = reason, forced_at = now / 1000, since = since,
               hold_seconds = hold_ms / 1000, lapse_at = (now + hold_ms + grace_ms) / 1000,
               holds = holds, by = by, id = redis.sha1hex(now .. by_json .. reason)}
  rec['until'] = (now + hold_ms) / 1000
  local raw = cjson.encode(rec)
  -- Safety net only: readers or the prober normally end the record (and log it) first.
  redis.call('SET', FORCED, raw, 'PXAT', now + hold_ms + 2 * grace_ms)
  return raw
end
