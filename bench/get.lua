-- wrk script: GET with a bearer token from the environment (BENCH_TOKEN; none, no header).
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
