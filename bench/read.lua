-- wrk script: GET /api/secrets/by-name/{name}/value, the audited value read, over a set of names.
--
--   wrk -t2 -c64 -d10s -s bench/read.lua http://127.0.0.1:PORT/ -- TOKEN PREFIX NAMES COUNT [count]
--
-- bench/run creates COUNT secrets NAMES_0 .. NAMES_<COUNT-1> before the rounds and passes
-- a key that may read values (secrets:read). Thread t starts at name (t-1) * COUNT / 2 and
-- cycles through them all (two threads read different names at any moment).
--
-- Every request carries X-Request-ID: PREFIX-<thread>-<counter>, unique within a run as long
-- as PREFIX is unique per round, so that bench/run can count the round's secret.accessed
-- events (each carries the request id) against the 200s counted here.
--
-- With a fifth argument "count", response() tallies every status code (see tally.lua).
-- done() prints one line: "BENCH_RESULT {json}".

local tally = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "tally.lua")
setup = tally.setup
done = tally.done("200")

local counter = 0
local prefix = "BENCH"
local names = "BENCHREAD"
local count = 1
local offset = 0
local headers = {}
local keys = {}

function init(args)
   keys = tally.keys(args[1])
   prefix = args[2] or "BENCH"
   names = args[3] or "BENCHREAD"
   count = tonumber(args[4]) or 1
   offset = math.floor((tid - 1) * count / 2)
   headers = {}
   tally.count(args[5] == "count")
end

function request()
   counter = counter + 1
   sent = counter
   local i = (offset + counter) % count
   headers["X-Auth-Token"] = keys[(counter + tid) % #keys + 1]
   headers["X-Request-ID"] = prefix .. "-" .. tid .. "-" .. counter
   return wrk.format("GET", "/api/secrets/by-name/" .. names .. "_" .. i .. "/value", headers)
end
