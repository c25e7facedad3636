-- wrk script: 50/50 GET of preloaded keys / PUT of fresh keys, 1 KiB values, against one dynamod node.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

-- BENCH_TOKEN (a secured cluster, bench.py --tls): every request carries it as a bearer token.
local token = os.getenv("BENCH_TOKEN") or ""

local function headers(fields)
  if token ~= "" then
    fields["Authorization"] = "Bearer " .. token
  end
  return fields
end

function init(args)
  read_args(args)
  value = string.rep("v", 1024)
end

function request()
  counter = counter + 1
  if math.random() < 0.5 then
    return wrk.format("GET", "/kv/pre-" .. math.random(0, preloaded - 1), headers({["Accept"] = "application/json"}))
  end
  return wrk.format("PUT", "/kv/" .. prefix .. "-" .. tid .. "-" .. counter,
                    headers({["Content-Type"] = "application/octet-stream"}), value)
end
