-- WINDOW is a hash of per-slot counts, '<slot>:t' (reads) and '<slot>:b' (bad reads), and, while
-- the window holds bad reads, 'hot' (ms when they began) and 'told' (ms when the fleet was last
-- told). Healthy processes keep their counts until told (memguard.request.meter): the first bad
-- reads publish 'hot <A.window>' on A.channel, again every half window while bad reads remain,
-- and the window is judged only A.catchup_ms after 'hot', when the kept counts have come in.
-- A.counts: {age_ms, reads, bad} per slot of the batch; each lands in the slot of its own time.
local now = now_ms()
local function add(field, n)
  if type(redis.pcall('HINCRBY', WINDOW, field, n)) ~= 'number' then
    redis.call('HDEL', WINDOW, field)  -- a count that is not a whole number starts again
    table.insert(REPAIRED, WINDOW .. ' held a count that is not a whole number')
    redis.call('HINCRBY', WINDOW, field, n)
  end
end
for _, c in ipairs(A.counts) do
  local age, n, b = tonumber(c[1]), tonumber(c[2]), tonumber(c[3])
  if age and n and b and age >= 0 and age < A.window_ms then
    local slot = math.floor((now - age) / A.slot_ms)
    if n ~= 0 then add(slot .. ':t', n) end
    if b ~= 0 then add(slot .. ':b', b) end
  end
end
redis.call('PEXPIRE', WINDOW, A.window_ms + 2 * A.slot_ms)
local oldest = math.floor((now - A.window_ms) / A.slot_ms)
local reads, bad, marks = 0, 0, {}
local fields = redis.call('HGETALL', WINDOW)
for i = 1, #fields, 2 do
  local name, n = fields[i], tonumber(fields[i + 1])
  if name == 'hot' or name == 'told' then
    if n and n <= now then marks[name] = n end  -- else unreadable: written again below
  else
    local s, kind = string.match(name, '^(%d+):([tb])$')
    if s == nil or n == nil or tonumber(s) < oldest then  -- old, or not memguard's
      redis.call('HDEL', WINDOW, name)
    elseif kind == 't' then
      reads = reads + n
    else
      bad = bad + n
    end
  end
end
if bad <= 0 then
  redis.call('HDEL', WINDOW, 'hot', 'told')
  return cjson.encode({status = 'counted', reads = reads, bad = bad, waiting = false})
end
local hot = marks.hot
if not hot then
  hot = now
  redis.call('HSET', WINDOW, 'hot', now)
end
if not marks.told or now - marks.told >= A.window_ms / 2 then
  redis.call('HSET', WINDOW, 'told', now)
  redis.call('PUBLISH', A.channel, 'hot ' .. A.window)
end
-- During a ramp (the half-open state) the window is judged at once.
local waiting = now - hot < A.catchup_ms and not active_ramp(now)
if waiting or reads < A.min_reads or bad <= reads * A.ratio then
  return cjson.encode({status = 'counted', reads = reads, bad = bad, waiting = waiting})
end
local raw = redis.call('GET', FORCED)
if decode(raw) then return cjson.encode({status = 'held', reads = reads, bad = bad, record = raw}) end
if not A.auto then return cjson.encode({status = 'disabled', reads = reads, bad = bad}) end
local new, ramp = trip(now, A.reason, A.hold_ms, A.grace_ms, A.by, A.cap_ms, A.jitter)
return cjson.encode({status = 'forced', reads = reads, bad = bad, record = new, previous = raw or '',
                     notice = notify({forced = new, ramp = ramp})})
