-- Shared by the bench/*.lua wrk scripts: thread ids, the status tally and done()'s one line.
--
--   local tally = dofile(<this directory> .. "tally.lua")
--   setup = tally.setup                  -- each thread gets "tid" (1, 2, ...)
--   tally.count(args[n] == "count")      -- in init(): count every status in response(), or not
--   done = tally.done("201")             -- the status that means success
--
-- Counting makes wrk hand each response's headers and body to Lua, which costs client
-- CPU (measured in bench/README.md); without it, non-2xx answers are counted from
-- summary.errors.status (wrk counts every status > 399 there) and bench/run checks the
-- successes against the database afterwards.
--
-- done() prints one line: "BENCH_RESULT {json}", with "statuses" and "non_<ok>" when counted.
-- A script's request() sets the global `sent` (requests handed to wrk by this thread).

local tally = {}
local threads = {}
local next_tid = 0

statuses = {}
sent = 0

-- The key argument: one key, or "@<file>" of keys (one a line) that requests take turns with.
function tally.keys(arg)
   local keys = {}
   if arg and arg:sub(1, 1) == "@" then
      for key in io.lines(arg:sub(2)) do
         if #key > 0 then table.insert(keys, key) end
      end
   else
      table.insert(keys, arg or "")
   end
   return keys
end

function tally.setup(thread)
   next_tid = next_tid + 1
   thread:set("tid", next_tid)
   table.insert(threads, thread)
end

local function count_response(status, hdrs, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

-- wrk decides after init() whether to call response(): leave it undefined unless asked.
function tally.count(on)
   if on then
      response = count_response
   else
      response = nil
   end
end

local function json_string(s)
   return '"' .. tostring(s):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function tally.done(ok)
   return function(summary, latency, requests)
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
         local non_ok = 0
         for k, v in pairs(total_statuses) do
            table.insert(st, json_string(k) .. ":" .. v)
            if k ~= ok then non_ok = non_ok + v end
         end
         table.insert(parts, '"statuses":{' .. table.concat(st, ",") .. '}')
         table.insert(parts, '"non_' .. ok .. '":' .. non_ok)
      end
      io.write("BENCH_RESULT {" .. table.concat(parts, ",") .. "}\n")
   end
end

return tally
