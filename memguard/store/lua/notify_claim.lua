-- Hands each audit entry to exactly one caller fleet-wide: the cursor moves past what is
-- returned in the same step. The first call starts at the end of the stream, or (a named
-- guard's: its stream begins with its first transition) at the entries of the last
-- A.replay_ms milliseconds.
local cursor = redis.call('GET', CURSOR)
if cursor and not string.match(cursor, '^%d+%-%d+$') then  -- not a stream id: start at the end
  cursor = nil
  table.insert(REPAIRED, CURSOR .. ' was not a stream id')
end
local stuck = false
if A.stuck_episode ~= '' and redis.call('GET', STUCK) ~= A.stuck_episode then
  redis.call('SET', STUCK, A.stuck_episode, 'EX', 7 * 86400)
  stuck = true
end
if not cursor and A.replay_ms > 0 then
  local t = redis.call('TIME')
  cursor = tostring(math.max(0, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - A.replay_ms)) .. '-0'
end
if not cursor then
  local last = redis.call('XREVRANGE', AUDIT, '+', '-', 'COUNT', 1)
  redis.call('SET', CURSOR, last[1] and last[1][1] or '0-0')
  return cjson.encode({stuck = stuck})
end
local entries = {}
for _, e in ipairs(redis.call('XRANGE', AUDIT, '(' .. cursor, '+', 'COUNT', A.limit)) do
  local fields = {}
  for i = 1, #e[2], 2 do fields[e[2][i]] = e[2][i + 1] end
  table.insert(entries, {id = e[1], fields = fields})
  cursor = e[1]
end
redis.call('SET', CURSOR, cursor)
return cjson.encode({stuck = stuck, entries = entries})
