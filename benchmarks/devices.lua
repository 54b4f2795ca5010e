-- Apple Wallet devices calling passpush's PassKit web service, for wrk (benchmarks/wrk.py).
--
--   wrk -t T -c T -d <limit> -s devices.lua <http://host:port> -- \
--       <mode> <devices file> <prefix> <pass type> <rounds> <T> <out path>
--
-- One connection per thread: a device's requests go in order on one keep-alive connection.
-- Thread k walks devices k, k+T, k+2T... of the devices file (a line per device:
-- library id, serial, ApplePass token, update tag, push token; tab-separated), `rounds`
-- times (0: until wrk is stopped). Modes:
--   register  POST {prefix}/v1/devices/{id}/registrations/{type}/{serial}   (200/201)
--   serials   GET  {prefix}/v1/devices/{id}/registrations/{type}?passesUpdatedSince={tag}
--             (200 listing the device's serial)
--   pull      serials as above, then GET {prefix}/v1/passes/{type}/{serial} with the token
--             (200 with a .pkpass): what a device does after a push
-- A thread prints "DONE <n>" once its rounds are over; wrk.py then stops wrk, and done()
-- writes <out path>.summary, .latency (microseconds, one a line) and .tags (each device's
-- lastUpdated, the tag it asks from next time).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } devices_timespec;
int clock_gettime(int clock, devices_timespec *now);
]]
local clock = ffi.new("devices_timespec")

local function now_us()
  ffi.C.clock_gettime(0, clock) -- CLOCK_REALTIME: the benchmark's time.time()
  return tonumber(clock.tv_sec) * 1000000 + math.floor(tonumber(clock.tv_nsec) / 1000)
end

-- Main state: the threads, for done().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

-- Thread state.
local mode, prefix, pass_type, rounds
local mine = {}
local position, round, fetching = 1, 1, false
local started_us

function init(args)
  mode, prefix, pass_type = args[1], args[3], args[4]
  rounds, out_path = tonumber(args[5]), args[7]
  local total = tonumber(args[6])
  local index = 0
  for line in io.lines(args[2]) do
    if index % total == id - 1 then
      local device, serial, token, tag, push = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$")
      mine[#mine + 1] = { device = device, serial = serial, token = token, tag = tag, push = push }
    end
    index = index + 1
  end
  -- Read by done() through thread:get.
  requests, bad, finished, first_us, last_us = 0, 0, false, 0, 0
  latencies, statuses, tags, failures = {}, {}, {}, {}
end

local function serials_path(d)
  return prefix .. "/v1/devices/" .. d.device .. "/registrations/" .. pass_type
      .. "?passesUpdatedSince=" .. d.tag
end

function request()
  local d = mine[position]
  if finished or d == nil then
    -- wrk may ask once more before it stops the thread; this one is not counted.
    return wrk.format("GET", prefix .. "/v1/devices/none/registrations/none")
  end
  started_us = now_us()
  if first_us == 0 then first_us = started_us end
  if mode == "register" then
    return wrk.format("POST",
      prefix .. "/v1/devices/" .. d.device .. "/registrations/" .. pass_type .. "/" .. d.serial,
      { ["Authorization"] = "ApplePass " .. d.token, ["Content-Type"] = "application/json" },
      '{"pushToken":"' .. d.push .. '"}')
  end
  if fetching then
    return wrk.format("GET", prefix .. "/v1/passes/" .. pass_type .. "/" .. d.serial,
      { ["Authorization"] = "ApplePass " .. d.token })
  end
  return wrk.format("GET", serials_path(d))
end

local function fail(status, why)
  bad = bad + 1
  if #failures < 10 then
    failures[#failures + 1] = mode .. " " .. mine[position].device .. ": " .. status .. " " .. why
  end
end

local function next_device()
  fetching = false
  position = position + 1
  if position > #mine then
    position = 1
    round = round + 1
    if rounds > 0 and round > rounds then
      finished = true
      io.write("DONE " .. id .. "\n")
      io.stdout:flush()
      wrk.thread:stop()
    end
  end
end

function response(status, headers, body)
  if finished then return end
  local ended = now_us()
  last_us = ended
  requests = requests + 1
  latencies[#latencies + 1] = ended - started_us
  statuses[status] = (statuses[status] or 0) + 1
  local d = mine[position]
  if mode == "register" then
    if status ~= 201 and status ~= 200 then fail(status, body:sub(1, 200)) end
    return next_device()
  end
  if fetching then -- the pass
    if status ~= 200 or body:sub(1, 2) ~= "PK" then fail(status, "no .pkpass") end
    return next_device()
  end
  -- the serials
  local listed = status == 200 and body:match('"serialNumbers":%[(.-)%]') or ""
  if not listed:find('"' .. d.serial .. '"', 1, true) then
    fail(status, "serial not listed: " .. body:sub(1, 200))
    return next_device()
  end
  tags[d.device] = body:match('"lastUpdated":"(%d+)"')
  if mode == "pull" then
    fetching = true
  else
    next_device()
  end
end

function done(summary, latency, requests)
  local out = threads[1]:get("out_path")
  local lines, latency_file, tag_file = {}, io.open(out .. ".latency", "w"), io.open(out .. ".tags", "w")
  for _, thread in ipairs(threads) do
    lines[#lines + 1] = string.format("thread %d %d %d %.0f %.0f %s", thread:get("id"),
      thread:get("requests"), thread:get("bad"), thread:get("first_us"), thread:get("last_us"),
      tostring(thread:get("finished")))
    for status, count in pairs(thread:get("statuses")) do
      lines[#lines + 1] = string.format("status %d %d", status, count)
    end
    for _, why in ipairs(thread:get("failures")) do
      lines[#lines + 1] = "failure " .. why:gsub("[\r\n]", " ")
    end
    for _, value in ipairs(thread:get("latencies")) do
      latency_file:write(string.format("%.0f\n", value))
    end
    for device, tag in pairs(thread:get("tags")) do
      tag_file:write(device .. "\t" .. tag .. "\n")
    end
  end
  latency_file:close()
  tag_file:close()
  local summary_file = io.open(out .. ".summary", "w")
  summary_file:write(table.concat(lines, "\n") .. "\n")
  summary_file:close()
end
