-- wrk script for B2's reference row: a plain GET (e.g. /health: no key, no database), with the same summary line.
package.path = package.path .. ";" .. (os.getenv("I2V_BENCH_LUA_DIR") or "bench/wrk") .. "/?.lua"
local common = require("common")

done = common.done
