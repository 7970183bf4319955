-- wrk script: POST a JSON body with a bearer token, both from the environment
-- (BENCH_BODY, BENCH_TOKEN; no token, no Authorization header).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
