-- wrk script: PUT /api/secrets/{id} (a new version of the value) over a set of secrets.
--
--   wrk -t2 -c64 -d10s -s bench/update.lua http://127.0.0.1:PORT/ -- TOKEN PREFIX IDS THREADS [count]
--
-- IDS is a file with one secret id per line (bench/run creates the secrets before the
-- rounds). Thread t of THREADS updates only the ids on lines t, t + THREADS, ..., in turn,
-- so two threads never write the same secret, and one thread comes back to a secret only
-- after len(IDS) / THREADS requests: concurrent writers rarely meet on one row.
--
-- Every request carries X-Request-ID: PREFIX-<thread>-<counter>, unique within a run as long
-- as PREFIX is unique per round, so that bench/run can count the round's secret.updated
-- events (each carries the request id) against the 200s counted here.
--
-- With a fifth argument "count", response() tallies every status code (see tally.lua).
-- done() prints one line: "BENCH_RESULT {json}".

local tally = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "tally.lua")
setup = tally.setup
done = tally.done("200")

local counter = 0
local keys = {}
local prefix = "BENCH"
local ids = {}
local headers = {}

function init(args)
   keys = tally.keys(args[1])
   prefix = args[2] or "BENCH"
   local threads = tonumber(args[4]) or 1
   local line = 0
   for id in io.lines(args[3]) do
      if (line % threads) == (tid - 1) % threads then
         table.insert(ids, id)
      end
      line = line + 1
   end
   assert(#ids > 0, "no secret ids for thread " .. tid .. " in " .. tostring(args[3]))
   headers = {
      ["Content-Type"] = "application/json",
   }
   tally.count(args[5] == "count")
end

function request()
   counter = counter + 1
   sent = counter
   local id = ids[(counter - 1) % #ids + 1]
   headers["X-Auth-Token"] = keys[(counter + tid) % #keys + 1]
   headers["X-Request-ID"] = prefix .. "-" .. tid .. "-" .. counter
   local body = '{"value":"bench-update-' .. tid .. "-" .. counter .. '-0123456789abcdef-0123456789"}'
   return wrk.format("PUT", "/api/secrets/" .. id, headers, body)
end
