-- A change to a view's key that no transition announced (a hand SET/DEL, older code, an expiry)
-- reaches every view through tracking. Rather than each re-reading, about six views chosen at
-- random ask here (the snapshot's fleet, PUBSUB NUMSUB, is how they choose): the first to ask
-- about the values as they now are publishes them on A.channel as 'explain <snapshot>', so the
-- rest of the fleet applies it without a command;
-- LOCK holds a digest of the values (and the record's expiry) last published, for A.ttl_ms,
-- so later askers about the same values publish nothing. Every caller also gets the snapshot
-- in its reply. VERSION is bumped for each caller, so an explanation is never taken for an
-- older one. Read-only but for VERSION and LOCK: a key of the wrong type is named in problems,
-- left for a transition to repair.
local v = redis.pcall('INCR', VERSION)
if type(v) ~= 'number' then return cjson.encode({sent = false}) end  -- unreadable: the view re-reads
local problems = {}
local function read(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then return redis.call('GET', key) end
  if kind ~= 'none' then table.insert(problems, key .. ' holds a ' .. kind .. ', not a string') end
  return false
end
local t = redis.call('TIME')
local forced, count = read(FORCED), read(COUNTER)
local snapshot = cjson.encode({
  forced = forced, count = count, version = v,
  ttl = redis.call('PTTL', COUNTER), fttl = redis.call('PTTL', FORCED),
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), problems = problems,
  fleet = redis.call('PUBSUB', 'NUMSUB', A.channel)[2]})
local expires = redis.pcall('PEXPIRETIME', FORCED)  -- Redis 7; on 6 an error, left out
local digest = redis.sha1hex(table.concat({tostring(forced), tostring(count), table.concat(problems, ';'),
                                           type(expires) == 'number' and expires or ''}, '\0'))
local sent = redis.pcall('GET', LOCK) ~= digest
if sent then
  redis.call('SET', LOCK, digest, 'PX', A.ttl_ms)
  redis.call('PUBLISH', A.channel, 'explain ' .. snapshot)
end
return cjson.encode({sent = sent, snapshot = snapshot})
