-- A named guard's entry in the fleet's index of hold ends (HOLDS): due_ms is when its hold or
-- recovery ramp ends; null removes the entry (the guard is healthy again). Written after the
-- guard's transitions by memguard.store.state; the prober reads it for the guards that are due.
if A.due_ms == nil or A.due_ms == cjson.null then
  redis.call('ZREM', HOLDS, A.guard)
  return cjson.encode({indexed = false})
end
-- A.sooner (an experiment's end): only if nothing is due sooner.
local due = redis.call('ZSCORE', HOLDS, A.guard)
if A.sooner and due and tonumber(due) <= A.due_ms then return cjson.encode({indexed = true}) end
redis.call('ZADD', HOLDS, A.due_ms, A.guard)
return cjson.encode({indexed = true})
