-- wrk: POST with an empty body and "Authorization: Bearer $BENCH_TOKEN"
-- (authd's POST /verify).
local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
        error("BENCH_TOKEN is not set")
end

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
