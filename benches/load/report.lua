-- wrk reporter: one machine-readable line (latencies in microseconds).
-- RESULT rps p50 p99 p99.9 non2xx socket_errors requests
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.1f %d %d %d %d %d %d\n", summary.requests / secs,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end
