-- wrk reporter for bench/run: one machine-readable line with exact
-- percentiles (microseconds) so the script does not parse human units.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f max_us=%.0f non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
