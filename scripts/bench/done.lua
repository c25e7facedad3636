-- Shared wrk `done` hook: one machine-readable line with counts and 1000 latency quantiles (µs).
return function(summary, latency, requests)
  local errors = summary.errors
  local parts = {}
  for i = 1, 1000 do
    parts[#parts + 1] = string.format("%d", latency:percentile(i / 10))
  end
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "quantiles_us": [%s]}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, table.concat(parts, ",")))
end
