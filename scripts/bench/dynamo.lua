-- wrk script: 50/50 GET of preloaded keys / PUT of fresh keys, 1 KiB values, against one dynamod node.
-- args: <preloaded key count> <fresh key prefix> [delay ms between requests per connection]
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  preloaded = tonumber(args[1])
  prefix = args[2]
  pause = tonumber(args[3] or "0")
  value = string.rep("v", 1024)
  counter = 0
  math.randomseed(os.time() * 1000 + tid)
end

function delay()
  return pause
end

function request()
  counter = counter + 1
  if math.random() < 0.5 then
    return wrk.format("GET", "/kv/pre-" .. math.random(0, preloaded - 1), {["Accept"] = "application/json"})
  end
  return wrk.format("PUT", "/kv/" .. prefix .. "-" .. tid .. "-" .. counter,
                    {["Content-Type"] = "application/octet-stream"}, value)
end

done = dofile(os.getenv("BENCH_DONE_LUA"))
