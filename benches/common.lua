-- Shared wrk logic for the meterd load tests (loaded by single.lua and batch.lua).
--
-- Every event id is unique: "<run prefix>-<thread>-<per-thread counter>". The run prefix
-- is RUN_PREFIX from the environment, or random. Events omit "time" (the server uses
-- the receive time) and carry "value": 1 on a `sum` lever, so a contract's usage total
-- is its number of accepted events.
--
-- Environment: METERD_KEY (required), RUN_PREFIX, LEVER (default bench_calls),
-- CONTRACT_PREFIX (default bench-c), CONTRACTS (default 8).
--
-- `done` prints machine-readable lines "BENCH key=value" that load.sh reads:
-- requests and events sent, answered, 2xx, non-2xx (by status), the `accepted`,
-- `duplicates` and `rejected` counts the server returned, events still unanswered when
-- wrk stopped (their outcome is unknown), rates and latency percentiles.

local M = {}

-- Main state (setup/done) only.
local threads = {}
local next_tid = 0
local run_prefix = nil

function M.install(events_per_request)
  function setup(thread)
    if run_prefix == nil then
      run_prefix = os.getenv("RUN_PREFIX")
      if run_prefix == nil or run_prefix == "" then
        math.randomseed(os.time())
        run_prefix = string.format("%x%06x", os.time(), math.random(0, 0xffffff))
      end
    end
    thread:set("tid", next_tid)
    thread:set("prefix", run_prefix)
    next_tid = next_tid + 1
    table.insert(threads, thread)
  end

  function init(args)
    local key = os.getenv("METERD_KEY")
    if key == nil or key == "" then
      error("METERD_KEY is not set")
    end
    lever = os.getenv("LEVER") or "bench_calls"
    contract_prefix = os.getenv("CONTRACT_PREFIX") or "bench-c"
    contracts = tonumber(os.getenv("CONTRACTS") or "8")
    wrk.method = "POST"
    wrk.path = "/v1/events"
    wrk.headers["Authorization"] = "Bearer " .. key
    wrk.headers["Content-Type"] = "application/json"
    n = 0
    sent_req, answered_req, ok_req, bad_req = 0, 0, 0, 0
    accepted, duplicates, rejected = 0, 0, 0
    codes = ""
    sample = ""
    status_counts = {}
  end

  local function event()
    local id = prefix .. "-" .. tid .. "-" .. n
    local contract = contract_prefix .. (n % contracts)
    n = n + 1
    return '{"id":"' .. id .. '","contract":"' .. contract .. '","lever":"' .. lever .. '","value":1}'
  end

  function request()
    local body
    if events_per_request == 1 then
      body = event()
    else
      local parts = {}
      for i = 1, events_per_request do
        parts[i] = event()
      end
      body = "[" .. table.concat(parts, ",") .. "]"
    end
    sent_req = sent_req + 1
    return wrk.format(nil, nil, nil, body)
  end

  function response(status, headers, body)
    answered_req = answered_req + 1
    if status >= 200 and status < 300 then
      ok_req = ok_req + 1
      accepted = accepted + (tonumber(string.match(body, '"accepted":(%d+)')) or 0)
      duplicates = duplicates + (tonumber(string.match(body, '"duplicates":(%d+)')) or 0)
      rejected = rejected + (tonumber(string.match(body, '"rejected":(%d+)')) or 0)
    else
      bad_req = bad_req + 1
      status_counts[status] = (status_counts[status] or 0) + 1
      local parts = {}
      for s, c in pairs(status_counts) do
        parts[#parts + 1] = s .. ":" .. c
      end
      codes = table.concat(parts, ",")
      if sample == "" then
        sample = string.sub(string.gsub(body or "", "%s+", " "), 1, 200)
      end
    end
  end

  function done(summary, latency, requests)
    local t = {
      sent_req = 0, answered_req = 0, ok_req = 0, bad_req = 0,
      accepted = 0, duplicates = 0, rejected = 0,
    }
    local all_codes, first_sample = {}, ""
    for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
        t[k] = t[k] + (thread:get(k) or 0)
      end
      local c = thread:get("codes")
      if c ~= nil and c ~= "" then
        all_codes[#all_codes + 1] = c
      end
      local s = thread:get("sample")
      if first_sample == "" and s ~= nil then
        first_sample = s
      end
    end
    local secs = summary.duration / 1e6
    local e = summary.errors
    local function out(k, v)
      io.write(string.format("BENCH %s=%s\n", k, tostring(v)))
    end
    local function int(v)
      return string.format("%d", v)
    end
    out("events_per_request", events_per_request)
    out("duration_s", string.format("%.3f", secs))
    out("requests_sent", int(t.sent_req))
    out("requests_answered", int(t.answered_req))
    out("requests_2xx", int(t.ok_req))
    out("requests_non2xx", int(t.bad_req))
    out("non2xx_by_status", table.concat(all_codes, ","))
    out("non2xx_sample", first_sample)
    out("events_2xx", int(t.ok_req * events_per_request))
    out("events_unanswered", int((t.sent_req - t.answered_req) * events_per_request))
    out("accepted", int(t.accepted))
    out("duplicates", int(t.duplicates))
    out("rejected", int(t.rejected))
    out("socket_errors", string.format("connect:%d,read:%d,write:%d,timeout:%d",
      e.connect, e.read, e.write, e.timeout))
    out("requests_per_s", string.format("%.1f", summary.requests / secs))
    out("events_2xx_per_s", string.format("%.1f", t.ok_req * events_per_request / secs))
    for _, p in ipairs({ 50, 90, 99, 99.9 }) do
      out("latency_p" .. p .. "_ms", string.format("%.2f", latency:percentile(p) / 1000))
    end
    out("latency_mean_ms", string.format("%.2f", latency.mean / 1000))
    out("latency_max_ms", string.format("%.2f", latency.max / 1000))
  end
end

return M
