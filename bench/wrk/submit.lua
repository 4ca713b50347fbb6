-- wrk script for submit runs (B2's submit rate, B6's queue fill): POST /video/submit, every request a new task for the
-- same small loopback image.
--   I2V_BENCH_KEY            API key (default benchkey)
--   I2V_BENCH_IMAGE_URL      the image (a loopback URL; the server needs I2V_ALLOW_PRIVATE_IMAGE_HOSTS=true)
--   I2V_BENCH_SUBMIT_LIMITS  optional, comma-separated: thread i stops after that many accepted (202) submits
--   I2V_BENCH_KEEP_IDS       optional, 1: every accepted request id is printed at the end on one
--                            `WRK_IDS id,id,...` line, each thread's in the order they were accepted
package.path = package.path .. ";" .. (os.getenv("I2V_BENCH_LUA_DIR") or "bench/wrk") .. "/?.lua"
local common = require("common")

local url = os.getenv("I2V_BENCH_IMAGE_URL")
if url == nil or url == "" then error("I2V_BENCH_IMAGE_URL is not set") end

common.setup_post(os.getenv("I2V_BENCH_KEY") or "benchkey")
wrk.body = '{"image_url":"' .. url .. '","prompt":"a cat dancing in the style of a painting",' ..
  '"image_size":"auto","num_frames":81,"infer_steps":30,"seed":42}'

local limits = {}
for n in string.gmatch(os.getenv("I2V_BENCH_SUBMIT_LIMITS") or "", "%d+") do limits[#limits + 1] = tonumber(n) end
local keep_ids = os.getenv("I2V_BENCH_KEEP_IDS") == "1"

-- Main thread: hand each thread its limit, keep the threads to collect their ids at the end.
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("limit", limits[#threads] or 0)
end

-- Each thread (its own Lua state): count accepted submits, keep their ids, stop at the limit.
limit = 0
accepted = 0
ids = {}
if #limits > 0 or keep_ids then
  function response(status, headers, body)
    if status ~= 202 then return end
    accepted = accepted + 1
    if keep_ids then
      local id = string.match(body, '"requestId"%s*:%s*"(%x+)"')
      if id ~= nil then ids[#ids + 1] = id end
    end
    if limit > 0 and accepted >= limit then wrk.thread:stop() end
  end
end

function done(summary, latency, requests)
  common.done(summary, latency, requests)
  if keep_ids then
    local all = {}
    for _, thread in ipairs(threads) do
      for _, id in ipairs(thread:get("ids") or {}) do all[#all + 1] = id end
    end
    io.write("WRK_IDS " .. table.concat(all, ",") .. "\n")
  end
end
