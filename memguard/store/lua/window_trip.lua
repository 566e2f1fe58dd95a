-- WINDOW is a hash of per-slot counts: '<slot>:t' (reads) and '<slot>:b' (bad reads).
local now = now_ms()
local slot = math.floor(now / A.slot_ms)
if type(redis.pcall('HINCRBY', WINDOW, slot .. ':t', A.reads)) ~= 'number' then
  redis.call('DEL', WINDOW)  -- a count that is not a whole number: the window starts again
  table.insert(REPAIRED, WINDOW .. ' held a count that is not a whole number')
  redis.call('HINCRBY', WINDOW, slot .. ':t', A.reads)
end
if type(redis.pcall('HINCRBY', WINDOW, slot .. ':b', A.bad)) ~= 'number' then
  redis.call('HDEL', WINDOW, slot .. ':b')
  redis.call('HINCRBY', WINDOW, slot .. ':b', A.bad)
end
redis.call('PEXPIRE', WINDOW, A.window_ms + 2 * A.slot_ms)
local oldest = math.floor((now - A.window_ms) / A.slot_ms)
local reads, bad = 0, 0
local fields = redis.call('HGETALL', WINDOW)
for i = 1, #fields, 2 do
  local s, kind = string.match(fields[i], '^(%d+):([tb])$')
  local n = tonumber(fields[i + 1])
  if s == nil or n == nil or tonumber(s) < oldest then  -- old, or not memguard's
    redis.call('HDEL', WINDOW, fields[i])
  elseif kind == 't' then
    reads = reads + n
  else
    bad = bad + n
  end
end
if reads < A.min_reads or bad <= reads * A.ratio then
  return cjson.encode({status = 'counted', reads = reads, bad = bad})
end
local raw = redis.call('GET', FORCED)
if decode(raw) then return cjson.encode({status = 'held', reads = reads, bad = bad, record = raw}) end
if not A.auto then return cjson.encode({status = 'disabled', reads = reads, bad = bad}) end
local new = write_record(now, A.reason, A.hold_ms, A.grace_ms, A.by, nil)
return cjson.encode({status = 'forced', reads = reads, bad = bad, record = new, previous = raw or '',
                     notice = notify({forced = new})})
