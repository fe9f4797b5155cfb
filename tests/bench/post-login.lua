-- wrk: POST /login with the JSON credentials in $BENCH_USERNAME and
-- $BENCH_PASSWORD (hex strings, so they need no JSON escaping).
local username = os.getenv("BENCH_USERNAME")
local password = os.getenv("BENCH_PASSWORD")
if username == nil or password == nil then
        error("BENCH_USERNAME and BENCH_PASSWORD must be set")
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"username":"%s","password":"%s"}', username, password)
