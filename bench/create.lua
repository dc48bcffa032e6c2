-- wrk script: POST /api/secrets with a unique name per request.
--
--   wrk -t2 -c64 -d10s -s bench/create.lua http://127.0.0.1:PORT/api/secrets -- TOKEN PREFIX [count]
--
-- Names are PREFIX_<thread>_<counter>: each wrk thread has its own Lua state and counter,
-- so names are unique across the run as long as PREFIX is unique per round
-- (bench/run uses BENCH_<runid>_<round>). PREFIX must match ^[A-Z][A-Z0-9_]*$.
--
-- With a third argument "count", response() tallies every status code (see tally.lua).
-- done() prints one line: "BENCH_RESULT {json}".

local tally = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "tally.lua")
setup = tally.setup
done = tally.done("201")

local counter = 0
local prefix = "BENCH"
local headers = {}
local keys = {}

function init(args)
   keys = tally.keys(args[1])
   prefix = args[2] or "BENCH"
   headers = {
      ["Content-Type"] = "application/json",
   }
   tally.count(args[3] == "count")
end

function request()
   counter = counter + 1
   sent = counter
   headers["X-Auth-Token"] = keys[(counter + tid) % #keys + 1]
   local body = '{"name":"' .. prefix .. "_" .. tid .. "_" .. counter ..
      '","value":"bench-value-0123456789abcdef-0123456789abcdef"}'
   return wrk.format("POST", nil, headers, body)
end
