-- wrk script for bench/run.sh.
--   CHECK_BODY=1: every response must be a 200 with exactly EXPECT_LEN body bytes (wrk then
--                 copies each body into Lua, which costs client CPU: used for the short
--                 verification pass, not for the measured runs)
--   otherwise:    only wrk's own counters: HTTP status >= 400 and socket errors
-- done() prints one machine-readable RESULT line.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  expect_len = tonumber(os.getenv("EXPECT_LEN"))
  bad_len = 0
  bad_status = 0
end

if os.getenv("CHECK_BODY") == "1" then
  function response(status, headers, body)
    if status ~= 200 then
      bad_status = bad_status + 1
    elseif #body ~= expect_len then
      bad_len = bad_len + 1
    end
  end
end

function done(summary, latency, requests)
  local bl, bs = 0, 0
  for _, t in ipairs(threads) do
    bl = bl + t:get("bad_len")
    bs = bs + t:get("bad_status")
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d bad_len=%d bad_status=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    bl, bs + e.status, e.connect + e.read + e.write + e.timeout))
end
