-- An operator's stop (memguard chaos stop): the experiment ends in every view at the notice.
local chaos, raw = end_chaos()
if chaos == nil then return cjson.encode({previous = ''}) end
return cjson.encode({previous = raw, notice = notify({chaos = chaos})})
