"""The Redis limiter: every replica checks one tenant's limits in one round trip (an atomic Lua script).

Keys (prefix `cg:`): `rate:{tenant}:requests` and `rate:{tenant}:tokens` hold a GCRA arrival time (expiring
when the allowance is whole again); `usage:{tenant}:day:{YYYY-MM-DD}` and `usage:{tenant}:month:{YYYY-MM}` are
hashes of requests, tokens and usd (kept one day past their period). Tenant names cannot contain `:` (config
names are `[A-Za-z0-9_.-]`, key tenants a hash). The math is gateway/store/limiter.py's, in Lua.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.config import Limits
from gateway.store.limiter import PERIOD_S, Decision, Limiter, Periods, Rate, Tally

_GCRA = """
local function check(key, limit, cost, now, period)
  if limit == 0 then return nil end
  local interval = period / limit
  local base = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local after = base + cost * interval
  local allowed = after - now <= period + 1e-9
  local at = base
  if allowed then at = after end
  local remaining = math.max(0, math.floor((period - (at - now)) / interval + 1e-9))
  return {allowed, after, remaining, at - now, math.max(after - now - period, 0.001)}
end
local function keep(key, tat, now)
  if tat > now then redis.call('SET', key, tostring(tat), 'PX', math.ceil((tat - now) * 1000)) end
end
"""

_ACQUIRE = _GCRA + """
local now, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local rq = check(KEYS[1], tonumber(ARGV[3]), 1, now, period)
local tk = check(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), now, period)
local day = tonumber(redis.call('HGET', KEYS[3], 'usd') or '0')
local month = tonumber(redis.call('HGET', KEYS[4], 'usd') or '0')
local budget_day, budget_month = tonumber(ARGV[6]), tonumber(ARGV[7])
local refused, retry = '', 0
if budget_day > 0 and day >= budget_day then refused = 'day'
elseif budget_month > 0 and month >= budget_month then refused = 'month'
else
  if rq and not rq[1] then refused = 'requests'; retry = rq[5] end
  if tk and not tk[1] then
    if refused == '' then refused = 'tokens' end
    retry = math.max(retry, tk[5])
  end
end
if refused == '' then
  if rq then keep(KEYS[1], rq[2], now) end
  if tk then keep(KEYS[2], tk[2], now) end
  for i = 3, 4 do
    redis.call('HINCRBY', KEYS[i], 'requests', 1)
    redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[5])
    redis.call('EXPIRE', KEYS[i], ARGV[5 + i])
  end
end
local out = {refused, tostring(retry)}
for _, c in ipairs({rq or false, tk or false}) do
  if c then table.insert(out, c[3]); table.insert(out, tostring(c[4]))
  else table.insert(out, -1); table.insert(out, '0') end
end
return out
"""

_SETTLE = _GCRA + """
local now, period, limit, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if limit > 0 and delta ~= 0 then
  local tat = math.max(math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + delta * period / limit, now)
  if tat > now then keep(KEYS[1], tat, now) else redis.call('DEL', KEYS[1]) end
end
for i = 2, 3 do
  if delta ~= 0 then redis.call('HINCRBY', KEYS[i], 'tokens', delta) end
  redis.call('HINCRBYFLOAT', KEYS[i], 'usd', ARGV[5])
  redis.call('EXPIRE', KEYS[i], ARGV[4 + i])
end
return 1
"""


class RedisLimiter(Limiter):
    def __init__(self, client: aioredis.Redis, prefix: str = "cg:") -> None:
        self.r = client
        self.p = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)

    def _usage_keys(self, tenant: str, periods: Periods) -> list[str]:
        return [f"{self.p}usage:{tenant}:day:{periods.day}", f"{self.p}usage:{tenant}:month:{periods.month}"]

    @staticmethod
    def _ttls(periods: Periods, now: float) -> list[int]:
        """Seconds each tally is kept: to one day past the end of its period."""
        return [int(periods.day_end - now) + 86400, int(periods.month_end - now) + 86400]

    async def acquire(self, tenant: str, limits: Limits, tokens: int, now: float) -> Decision:
        periods = Periods.at(now)
        keys = [f"{self.p}rate:{tenant}:requests", f"{self.p}rate:{tenant}:tokens", *self._usage_keys(tenant, periods)]
        args = [repr(now), repr(PERIOD_S), limits.requests_per_minute or 0, limits.tokens_per_minute or 0, tokens,
                repr(limits.usd_per_day or 0.0), repr(limits.usd_per_month or 0.0), *self._ttls(periods, now)]
        refused, retry, *rates = await self._acquire(keys=keys, args=args)
        return Decision(refused.decode() or None, float(retry),  # type: ignore[arg-type]
                        _rate(limits.requests_per_minute, rates[0], rates[1]),
                        _rate(limits.tokens_per_minute, rates[2], rates[3]))

    async def settle(self, tenant: str, limits: Limits, token_delta: int, usd: float, now: float) -> None:
        periods = Periods.at(now)
        keys = [f"{self.p}rate:{tenant}:tokens", *self._usage_keys(tenant, periods)]
        args = [repr(now), repr(PERIOD_S), limits.tokens_per_minute or 0, token_delta, f"{usd:.12f}",
                *self._ttls(periods, now)]
        await self._settle(keys=keys, args=args)

    async def usage(self, tenant: str, now: float) -> tuple[Tally, Tally]:
        async with self.r.pipeline(transaction=False) as pipe:
            for key in self._usage_keys(tenant, Periods.at(now)):
                pipe.hmget(key, "requests", "tokens", "usd")
            day, month = await pipe.execute()
        return _tally(day), _tally(month)


def _rate(limit: int | None, remaining: int, reset: bytes) -> Rate | None:
    return None if limit is None else Rate(limit, int(remaining), float(reset))


def _tally(fields: list[bytes | None]) -> Tally:
    requests, tokens, usd = fields
    return Tally(int(requests or 0), int(tokens or 0), float(usd or 0))
