-- wrk script: 1,000 events per POST /v1/events (JSON array), or BATCH_EVENTS.
-- See common.lua.
local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
dofile(dir .. "common.lua").install(tonumber(os.getenv("BATCH_EVENTS") or "1000"))
