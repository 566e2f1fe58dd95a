-- Runs before every script's body but explain's (after its header binds the keys). A memguard
-- key holding a value of another Redis type than memguard writes there (a hand HSET, an old
-- tool) is removed,
-- so that the script works over it instead of failing with WRONGTYPE; the reply then lists
-- it in ``repaired_keys``. Values of the right type but unreadable are each script's business.
local REPAIRED = {}

local function expect(key, kind)
  local found = redis.call('TYPE', key).ok
  if found ~= 'none' and found ~= kind then
    redis.call('DEL', key)
    table.insert(REPAIRED, key .. ' held a ' .. found .. ', not a ' .. kind)
  end
end
