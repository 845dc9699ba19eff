-- wrk: each request asks for PREFIX .. k, k picked at random in 1..N.
-- usage: wrk ... -s bench/lua/random_url.lua URL -- PREFIX N
local prefix, n

function init(args)
  prefix = args[1]
  n = tonumber(args[2])
  math.randomseed(os.time())
end

function request()
  return wrk.format(nil, prefix .. math.random(n))
end
