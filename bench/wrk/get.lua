-- GET a random document of the 100,000 seeded by `hearth-bench seed`.
local key = "Bearer " .. os.getenv("BENCH_KEY")
request = function()
  return wrk.format("GET", "/v1/docs/items/i" .. math.random(0, 99999), { ["Authorization"] = key })
end
