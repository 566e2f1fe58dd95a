-- A change to a view's key that no transition announced (a hand SET/DEL, older code, an expiry)
-- reaches every view through tracking. Rather than each re-reading, about six views chosen at
-- random ask here (the snapshot's fleet, PUBSUB NUMSUB, is how they choose): the first to ask
-- about the values as they now are publishes them on A.channel as 'explain <snapshot>', so the
-- rest of the fleet applies it without a command.
-- LOCK holds, for A.ttl_ms, a digest of the values last published (and the record's expiry)
-- with the VERSION they were published at. A later asker finding both unchanged publishes
-- nothing and is answered with that same version; a transition since (it bumps VERSION) or
-- other values make the next asker publish, bumping VERSION, so an explanation is never taken
-- for an older one. Every caller gets the snapshot in its reply. Read-only but for VERSION and
-- LOCK: a key of the wrong type is named in problems, left for a transition to repair.
local current = redis.pcall('GET', VERSION)
if type(current) == 'table' then return cjson.encode({sent = false}) end  -- unreadable: the view re-reads
local problems = {}
local function read(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then return redis.call('GET', key) end
  if kind ~= 'none' then table.insert(problems, key .. ' holds a ' .. kind .. ', not a string') end
  return false
end
local t = redis.call('TIME')
local forced, count, ramp, chaos = read(FORCED), read(COUNTER), read(RAMP), read(CHAOS)
local expires = redis.pcall('PEXPIRETIME', FORCED)  -- Redis 7; on 6 an error, left out
local digest = redis.sha1hex(table.concat({tostring(forced), tostring(count), tostring(ramp),
                                           tostring(chaos), table.concat(problems, ';'),
                                           type(expires) == 'number' and expires or ''}, '\0'))
local v = tonumber(current)
local sent = redis.pcall('GET', LOCK) ~= digest .. ':' .. tostring(current)
if sent or v == nil then
  v = redis.pcall('INCR', VERSION)
  if type(v) ~= 'number' then return cjson.encode({sent = false}) end  -- not a whole number: re-read
  sent = true
  redis.call('SET', LOCK, digest .. ':' .. v, 'PX', A.ttl_ms)
end
local snapshot = cjson.encode({
  forced = forced, count = count, ramp = ramp, chaos = chaos, version = v,
  ttl = redis.call('PTTL', COUNTER), fttl = redis.call('PTTL', FORCED),
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), problems = problems,
  fleet = redis.call('PUBSUB', 'NUMSUB', A.channel)[2]})
if sent then redis.call('PUBLISH', A.channel, 'explain ' .. snapshot) end
return cjson.encode({sent = sent, snapshot = snapshot})
