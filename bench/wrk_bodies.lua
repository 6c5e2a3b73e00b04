-- wrk script for the ingest benchmark: posts pre-signed, distinct bodies and counts statuses.
-- Usage (bench/loadgen.py builds this command):
--   wrk -t1 -c16 -d20s --timeout 10s -s bench/wrk_bodies.lua http://127.0.0.1:8000/webhooks -- BODIES THREADS
-- BODIES: one request a line, "<signature>\t<event type>\t<JSON body>"; thread k of THREADS sends
-- lines k, k+THREADS, ... in order, wrapping around (then `wrapped` is reported: duplicates were sent).
-- done() prints one line "WRK_JSON {...}" with the counts and latency percentiles in microseconds.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  local path_only = wrk.path
  prepared = {}
  local line_no = 0
  for line in io.lines(path) do
    if line_no % nthreads == id then
      local first = line:find("\t", 1, true)
      local second = line:find("\t", first + 1, true)
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-SalonBookIt-Signature"] = line:sub(1, first - 1),
        ["X-SalonBookIt-Event"] = line:sub(first + 1, second - 1),
      }
      prepared[#prepared + 1] = wrk.format("POST", path_only, headers, line:sub(second + 1))
    end
    line_no = line_no + 1
  end
  position = 0
  wrapped = 0
  statuses = {}
end

function request()
  position = position + 1
  if position > #prepared then
    position = 1
    wrapped = 1
  end
  return prepared[position]
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local counts, any_wrapped = {}, 0
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, n in pairs(s) do
      counts[status] = (counts[status] or 0) + n
    end
    if thread:get("wrapped") == 1 then
      any_wrapped = 1
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "p999_us": %d, "max_us": %d, "wrapped": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, any_wrapped, table.concat(parts, ", ")))
end
