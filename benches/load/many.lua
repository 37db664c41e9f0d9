-- wrk script: every request carries the next token of a file (one JWT per line), so each
-- request presents a token the proxy has not seen (until the file wraps around).
--   wrk ... -s many.lua URL -- TOKEN_FILE [START_INDEX]
-- Headers given with -H (Host) are kept; Authorization is replaced per request.
local tokens, n, i = {}, 0, 0
local headers = {}

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then n = n + 1; tokens[n] = line end
  end
  i = (tonumber(args[2] or "0") or 0) % n
  for k, v in pairs(wrk.headers) do headers[k] = v end
end

request = function()
  i = i + 1
  if i > n then i = 1 end
  headers["Authorization"] = "Bearer " .. tokens[i]
  return wrk.format(nil, nil, headers)
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.1f %d %d %d %d %d %d\n", summary.requests / secs,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end
