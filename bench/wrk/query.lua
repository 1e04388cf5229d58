-- The indexed query: one owner's 20 documents by score, out of 100,000.
local key = "Bearer " .. os.getenv("BENCH_KEY")
request = function()
  local body = '{"collection":"items","where":[{"field":"owner","op":"==","value":"u' .. math.random(0, 4999)
    .. '"}],"order_by":[{"field":"score","dir":"desc"}],"limit":20}'
  return wrk.format("POST", "/v1/query", { ["Authorization"] = key, ["Content-Type"] = "application/json" }, body)
end
