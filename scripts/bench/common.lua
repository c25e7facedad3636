-- Shared by the wrk scripts: thread ids, arguments, pacing, and the `done` report.
-- args: <preloaded key count> <fresh key prefix> [delay ms between requests per connection]
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function read_args(args)
  preloaded = tonumber(args[1])
  prefix = args[2]
  pause = tonumber(args[3] or "0")
  counter = 0
  math.randomseed(os.time() * 1000 + tid)
end

function delay()
  return pause
end

done = dofile(os.getenv("BENCH_LUA_DIR") .. "/done.lua")
