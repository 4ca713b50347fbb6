-- wrk script for B2: POST /video/status on existing tasks, cycling through their ids.
--   I2V_BENCH_KEY  API key (default benchkey)
--   I2V_BENCH_IDS  comma-separated request ids (32 hex digits each) owned by that key
package.path = package.path .. ";" .. (os.getenv("I2V_BENCH_LUA_DIR") or "bench/wrk") .. "/?.lua"
local common = require("common")

local bodies = {}
for id in string.gmatch(os.getenv("I2V_BENCH_IDS") or "", "[0-9a-f]+") do
  bodies[#bodies + 1] = '{"requestId":"' .. id .. '"}'
end
if #bodies == 0 then error("I2V_BENCH_IDS names no request id") end

common.setup_post(os.getenv("I2V_BENCH_KEY") or "benchkey")
local counter = 0

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[counter % #bodies + 1])
end

done = common.done
