-- wrk script: plain GET / (the twisted.web ceiling).
done = dofile(os.getenv("BENCH_LUA_DIR") .. "/done.lua")
