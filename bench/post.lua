-- wrk script: POST a JSON body with a bearer token, both from the environment
-- (BENCH_BODY, BENCH_TOKEN; no token, no Authorization header).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
-- BENCH_LIMIT: send no more after that many responses (the bench then stops wrk).
local limit = tonumber(os.getenv("BENCH_LIMIT") or "")
if limit then
  local answered = 0
  function response(status, headers, body)
    answered = answered + 1
    if answered >= limit then
      wrk.thread:stop()
    end
  end
end
