-- wrk script for bench/upload_memory.py: anonymous POST /api/v1/identify with JUNK_PARTS parts of
-- JUNK_PART_MIB MiB of random bytes each (default 3 x 16 MiB), and a count of the answers by status.
--   JUNK_PARTS=3 JUNK_PART_MIB=16 wrk -t 2 -c 100 -d 30s --timeout 120s -s bench/upload_junk.lua \
--       http://127.0.0.1:8000/api/v1/identify

local parts = tonumber(os.getenv("JUNK_PARTS") or "3")
local part_mib = tonumber(os.getenv("JUNK_PART_MIB") or "16")
local boundary = "wrkjunkboundary7f3a"

math.randomseed(16)
local bytes = {}
for i = 1, 4096 do bytes[i] = string.char(math.random(0, 255)) end
local block = "JUNK" .. table.concat(bytes):sub(5)          -- never a photo's first bytes
local junk = string.rep(block, part_mib * 256)               -- part_mib MiB

local pieces = {}
for i = 1, parts do
  pieces[#pieces + 1] = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"j"
      .. i .. ".jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
  pieces[#pieces + 1] = junk
  pieces[#pieces + 1] = "\r\n"
end
pieces[#pieces + 1] = "--" .. boundary .. "--\r\n"

wrk.method = "POST"
wrk.body = table.concat(pieces)
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local keys = {}
  for status in pairs(total) do keys[#keys + 1] = status end
  table.sort(keys)
  io.write(string.format("body %.1f MiB per request; answers by status:", #wrk.body / 1048576))
  for _, status in ipairs(keys) do io.write(string.format(" %d: %d", status, total[status])) end
  io.write("\n")
end
