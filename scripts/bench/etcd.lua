-- wrk script: the same mix against etcd's v3 JSON gateway (range of preloaded keys / put of fresh keys).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return alphabet:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

function init(args)
  read_args(args)
  value = b64(string.rep("v", 1024))
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  if math.random() < 0.5 then
    return wrk.format("POST", "/v3/kv/range", headers,
                      '{"key":"' .. b64("pre-" .. math.random(0, preloaded - 1)) .. '"}')
  end
  return wrk.format("POST", "/v3/kv/put", headers,
                    '{"key":"' .. b64(prefix .. "-" .. tid .. "-" .. counter) .. '","value":"' .. value .. '"}')
end
