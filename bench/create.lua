-- wrk script: POST /api/secrets with a unique name per request.
--
--   wrk -t2 -c64 -d10s -s bench/create.lua http://127.0.0.1:PORT/api/secrets -- TOKEN PREFIX [count]
--
-- Names are PREFIX_<thread>_<counter>: each wrk thread has its own Lua state and counter,
-- so names are unique across the run as long as PREFIX is unique per round
-- (bench/run uses B<runid>_<round>). PREFIX must match ^[A-Z][A-Z0-9_]*$.
--
-- With a third argument "count", response() tallies every status code. wrk then has to
-- hand each response's headers and body to Lua, which costs client CPU (measured in
-- bench/README.md); by default non-2xx answers are counted from summary.errors.status
-- (wrk counts every status > 399 there) and bench/run checks the 201s against the
-- database afterwards.
--
-- done() prints one line: "BENCH_RESULT {json}".

local threads = {}
local next_tid = 0

function setup(thread)
   next_tid = next_tid + 1
   thread:set("tid", next_tid)
   table.insert(threads, thread)
end

local counter = 0
local prefix = "BENCH"
local headers = {}
statuses = {}
sent = 0

local function count_response(status, hdrs, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

function init(args)
   local token = args[1] or ""
   prefix = args[2] or "BENCH"
   headers = {
      ["Content-Type"] = "application/json",
      ["X-Auth-Token"] = token,
   }
   -- wrk decides after init() whether to call response(): leave it undefined unless asked.
   if args[3] == "count" then
      response = count_response
   else
      response = nil
   end
end

function request()
   counter = counter + 1
   sent = counter
   local body = '{"name":"' .. prefix .. "_" .. tid .. "_" .. counter ..
      '","value":"bench-value-0123456789abcdef-0123456789abcdef"}'
   return wrk.format("POST", nil, headers, body)
end

local function json_string(s)
   return '"' .. tostring(s):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
   local total_statuses = {}
   local counted = false
   local total_sent = 0
   for _, t in ipairs(threads) do
      local s = t:get("statuses")
      if s then
         for k, v in pairs(s) do
            total_statuses[k] = (total_statuses[k] or 0) + v
            counted = true
         end
      end
      total_sent = total_sent + (t:get("sent") or 0)
   end
   local e = summary.errors
   local secs = summary.duration / 1e6
   local parts = {
      '"requests":' .. summary.requests,
      '"duration_s":' .. string.format("%.6f", secs),
      '"rps":' .. string.format("%.2f", summary.requests / secs),
      '"bytes":' .. summary.bytes,
      '"requests_sent":' .. total_sent,
      '"latency_ms":{' ..
         '"mean":' .. string.format("%.3f", latency.mean / 1000) ..
         ',"stdev":' .. string.format("%.3f", latency.stdev / 1000) ..
         ',"max":' .. string.format("%.3f", latency.max / 1000) ..
         ',"p50":' .. string.format("%.3f", latency:percentile(50) / 1000) ..
         ',"p90":' .. string.format("%.3f", latency:percentile(90) / 1000) ..
         ',"p99":' .. string.format("%.3f", latency:percentile(99) / 1000) ..
         ',"p999":' .. string.format("%.3f", latency:percentile(99.9) / 1000) .. '}',
      '"errors":{"connect":' .. e.connect .. ',"read":' .. e.read .. ',"write":' .. e.write ..
         ',"status":' .. e.status .. ',"timeout":' .. e.timeout .. '}',
   }
   if counted then
      local st = {}
      local non201 = 0
      for k, v in pairs(total_statuses) do
         table.insert(st, json_string(k) .. ":" .. v)
         if k ~= "201" then non201 = non201 + v end
      end
      table.insert(parts, '"statuses":{' .. table.concat(st, ",") .. '}')
      table.insert(parts, '"non_201":' .. non201)
   end
   io.write("BENCH_RESULT {" .. table.concat(parts, ",") .. "}\n")
end
