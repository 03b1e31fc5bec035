-- wrk script: one event per POST /v1/events (JSON object). See common.lua.
local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
dofile(dir .. "common.lua").install(1)
