-- wrk script for B2's submit rate: POST /video/submit, every request a new task for the same small loopback image.
--   I2V_BENCH_KEY        API key (default benchkey)
--   I2V_BENCH_IMAGE_URL  the image (a loopback URL; the server needs I2V_ALLOW_PRIVATE_IMAGE_HOSTS=true)
package.path = package.path .. ";" .. (os.getenv("I2V_BENCH_LUA_DIR") or "bench/wrk") .. "/?.lua"
local common = require("common")

local url = os.getenv("I2V_BENCH_IMAGE_URL")
if url == nil or url == "" then error("I2V_BENCH_IMAGE_URL is not set") end

common.setup_post(os.getenv("I2V_BENCH_KEY") or "benchkey")
wrk.body = '{"image_url":"' .. url .. '","prompt":"a cat dancing in the style of a painting",' ..
  '"image_size":"auto","num_frames":81,"infer_steps":30,"seed":42}'

done = common.done
