-- wrk script for bench/identify.py --variants: POST /api/v1/identify with one photo (the file BENCH_PHOTO) as
-- a multipart part named "photos"; done() prints one JSON line (prefix "WRK_JSON ") with the requests, the
-- non-2xx answers, socket errors and the latency percentiles in microseconds.
--   BENCH_PHOTO=photo.jpg wrk -t 1 -c 8 -d 20s --timeout 60s -s bench/identify_wrk.lua \
--       http://127.0.0.1:8000/api/v1/identify

local path = os.getenv("BENCH_PHOTO") or error("BENCH_PHOTO: the photo to post")
local f = assert(io.open(path, "rb"))
local photo = f:read("*a")
f:close()
local boundary = "pollinidwrkboundary"

wrk.method = "POST"
wrk.body = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"photo.jpg\"\r\n"
    .. "Content-Type: image/jpeg\r\n\r\n" .. photo .. "\r\n--" .. boundary .. "--\r\n"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
