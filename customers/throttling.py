"""API rate limits, quota reservations and the failed-authentication lockout, all in Redis.

Which tool does what:

- **A GCRA in Redis** (the generic cell rate algorithm: a token bucket kept as one timestamp,
  the `_TAKE` Lua script) limits each customer's messages. Its bucket holds the customer's
  *burst* and refills at its *sustained rate* (Tier values, overridable per customer). A batch
  costs as many units as it holds messages; any other request costs one. The same script
  reserves the request's messages against the daily and monthly quotas (customers/quotas.py),
  refuses a client IP that is locked out, counts the request for abuse detection
  (customers/abuse.py) and returns what the RateLimit headers need: one Redis round trip per
  request, whatever the outcome.
- **django-ratelimit** counts failed authentications per client IP (`auth_failed`). That is a
  fixed-window counter, and its limits do not matter there: twice the limit at a window edge is
  20 guesses of a 256-bit key.

django-ratelimit is not used for the customer limits because it breaks their promise: fixed
windows admit up to 2x the rate across a window edge (a sold burst size would mean nothing); it
counts one unit per call, not N for a batch; its counters are keyed by the rate string, so a
tier change resets them; and it refuses with a 403 (`Ratelimited` is a `PermissionDenied`). The
GCRA stores the emission interval next to its timestamp, so a changed rate rescales the
customer's debt in messages (capped at the new burst) instead of forgetting it.

**Redis down: fail open.** These limits protect capacity, not correctness, and mailq's job is
to deliver password resets: losing Redis must not take the API down for every customer.
Authentication, suspensions and the durable usage count live in PostgreSQL and keep working;
rate limits, quota enforcement, the IP lockout and abuse counting pause, and responses carry no
RateLimit headers. After a failed Redis call this process skips Redis for
MAILQ_THROTTLE_RETRY_SECONDS, so an outage costs one connect timeout (MAILQ_REDIS_TIMEOUT_SECONDS)
per process per interval, not one per request. (django-ratelimit's own default,
RATELIMIT_FAIL_OPEN=False, blocks everyone; with Django's RedisCache it raises instead, so the
call is wrapped like ours.)

Responses: 429 `rate_limited` with Retry-After; 429 `quota_exceeded` with Retry-After and the
period's `resets_at`; `RateLimit-Policy` and `RateLimit` headers
(draft-ietf-httpapi-ratelimit-headers) on every response to an authenticated API request, added
in one place, `RateLimitMiddleware`, which also gives back unused reservations and counts
invalid requests. MAILQ_THROTTLING=0 turns all of this off (usage is still recorded).
Redis access (and the fail-open breaker) is in customers/counters.py.
"""

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_ratelimit.core import is_ratelimited
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from customers import abuse, counters, quotas
from customers.models import Customer, Limits, Usage
from mailq.errors import QuotaExceeded, RateLimited, Unprocessable

if TYPE_CHECKING:  # rest_framework.views imports the authentication classes, which import us
    from rest_framework.views import APIView

# Outcomes of the _TAKE script.
OK, RATE, DAY_QUOTA, MONTH_QUOTA, LOCKED, SEED = range(6)

_TAKE = """
-- KEYS: 1 GCRA bucket ("<tat> <interval>"), 2 day counter, 3 month counter,
--       4 the client IP's lockout, 5 the customer's abuse window (hash)
-- ARGV: 1 emission interval (us per message), 2 burst, 3 cost (messages),
--       4 messages to reserve against the quotas, 5 daily quota, 6 monthly quota,
--       7 abuse window TTL (s), 8 now (us), or "" for the Redis server's clock
-- Returns {outcome, retry_us, remaining, reset_us, day, month, requests, invalid, refused}.
local units = tonumber(ARGV[4])
local found = redis.call("MGET", KEYS[2], KEYS[3], KEYS[4], KEYS[1])
local day, month = tonumber(found[1]) or -1, tonumber(found[2]) or -1
if units > 0 and (day < 0 or month < 0) then
  return {5, 0, 0, 0, -1, -1, 0, 0, 0}
end
if found[3] then
  return {4, math.max(redis.call("PTTL", KEYS[4]), 1000) * 1000, 0, 0, -1, -1, 0, 0, 0}
end
local now
if ARGV[8] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[8])
end
local requests = redis.call("HINCRBY", KEYS[5], "requests", 1)
if requests == 1 then
  redis.call("EXPIRE", KEYS[5], ARGV[7])
end

local function refuse(outcome, retry, remaining, reset)
  local refused = redis.call("HINCRBY", KEYS[5], "refused", 1)
  local invalid = tonumber(redis.call("HGET", KEYS[5], "invalid") or 0)
  return {outcome, retry, remaining, reset, day, month, requests, invalid, refused}
end

-- GCRA: tat is when the bucket will be full again; a request fits if, after it, the bucket
-- is not more than `burst` messages short of full.
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat, before = now, nil
if found[4] then
  local stored, used_interval = string.match(found[4], "^(%S+) (%S+)$")
  tat, before = math.max(tonumber(stored), now), tonumber(used_interval)
end
local function store(t)
  redis.call("SET", KEYS[1], string.format("%.0f ", t) .. ARGV[1],
             "PX", math.ceil((t - now) / 1000) + 1000)
end
local tolerance = burst * interval
-- Limits changed since the last request (tier or override): the debt is kept in messages,
-- not in time, and capped at one full bucket; stored at once, so that the new terms apply
-- from this moment on even if this request is refused.
local owed = tat
if before and before ~= interval then
  owed = now + (tat - now) / before * interval
end
owed = math.min(owed, now + tolerance)
if owed ~= tat then
  store(owed)
  tat = owed
end
local new_tat = tat + tonumber(ARGV[3]) * interval
-- For a refusal, which takes nothing: the messages available now, and when the bucket is full.
local available = math.max(math.floor((tolerance - (tat - now)) / interval), 0)
local full = math.ceil(tat - now)
if new_tat - now > tolerance then
  return refuse(1, math.ceil(new_tat - now - tolerance), available, full)
end
if units > 0 then
  if day + units > tonumber(ARGV[5]) then return refuse(2, 0, available, full) end
  if month + units > tonumber(ARGV[6]) then return refuse(3, 0, available, full) end
  day = redis.call("INCRBY", KEYS[2], units)
  month = redis.call("INCRBY", KEYS[3], units)
end
store(new_tat)
return {0, 0, math.max(math.floor((tolerance - (new_tat - now)) / interval), 0),
        math.ceil(new_tat - now), day, month, requests, 0, 0}
"""

# A flushed counter is re-seeded from PostgreSQL; a DECRBY would recreate it negative and
# without a TTL, so only existing counters get units back.
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if redis.call("EXISTS", key) == 1 then redis.call("DECRBY", key, ARGV[1]) end
end
return 0
"""

# Answers a customer gives no reason to: 401/403 (not yet a customer), 409 (a legitimate race),
# 429 (counted as refused). What remains is a request the API could not use.
INVALID_STATUSES = frozenset({400, 404, 405, 413, 415, 422})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Quota counters outlive their period by this much, so a late give-back still finds them.
_COUNTER_GRACE_SECONDS = 3600


# --- the customer limits -------------------------------------------------------------------


class BatchOverBurst(Unprocessable):
    """A batch larger than the burst allowance could never pass: a client error, not a 429."""

    code = "batch_exceeds_burst"


@dataclass
class Decision:
    """What the throttle decided for one request, and what its headers say."""

    customer: Customer
    limits: Limits
    periods: tuple[quotas.Period, quotas.Period]
    now: datetime
    outcome: int
    retry_us: int
    remaining: int
    reset_us: int
    used: tuple[int, int]  # day, month; -1 when unknown
    window: abuse.Window
    reservation: quotas.Reservation | None = None

    def give_back_unused(self) -> None:
        """Return what the request did not use to the quota counters (and to the headers)."""
        unused = self.reservation.unused if self.reservation else 0
        if unused:
            give_back(self.reservation)
            self.used = tuple(max(used - unused, 0) if used >= 0 else used for used in self.used)

    def headers(self) -> dict[str, str]:
        """RateLimit-Policy (the limits) and RateLimit (what is left, and when it is full)."""
        limits, (day, month) = self.limits, self.periods
        refill = math.ceil(limits.burst / limits.rate_per_second)
        policy = [
            f'"burst";q={limits.burst};w={refill}',
            f'"day";q={limits.daily_quota};w={day.seconds}',
            f'"month";q={limits.monthly_quota};w={month.seconds}',
        ]
        state = [f'"burst";r={self.remaining};t={math.ceil(self.reset_us / 1e6)}']
        for period, used, quota in (
            (day, self.used[0], limits.daily_quota),
            (month, self.used[1], limits.monthly_quota),
        ):
            if used >= 0:
                state.append(
                    f'"{period.name}";r={max(quota - used, 0)};t={period.seconds_left(self.now)}'
                )
        return {"RateLimit-Policy": ", ".join(policy), "RateLimit": ", ".join(state)}

    def refusal(self) -> RateLimited | None:
        """The error to answer with, or None if the request may go on."""
        limits = self.limits
        if self.outcome == RATE:
            return RateLimited(
                f"Rate limit exceeded: {limits.rate_per_second} messages per second, bursts "
                f"of up to {limits.burst}. Retry after the Retry-After header's seconds.",
                retry_after=math.ceil(self.retry_us / 1e6),
            )
        if self.outcome in (DAY_QUOTA, MONTH_QUOTA):
            period = self.periods[0 if self.outcome == DAY_QUOTA else 1]
            quota = quotas.limit_of(self.customer, period)
            resets_at = period.resets_at.isoformat().replace("+00:00", "Z")
            return QuotaExceeded(
                f"The {'daily' if period.name == 'day' else 'monthly'} quota of {quota} "
                f"messages is used up; it resets at {resets_at}.",
                retry_after=period.seconds_left(self.now),
                fields={"period": period.name, "limit": quota, "resets_at": resets_at},
            )
        return None


def take(
    customer: Customer, cost: int, reserve: int, ip: str, now: datetime | None = None
) -> Decision | None:
    """Charge `cost` messages to the customer's bucket and reserve `reserve` against its quotas.

    One Redis round trip (two the first time a period's counters are needed). Returns None when
    Redis is unavailable (fail open). `now` is for tests; by default the script uses the Redis
    server's clock, the same for every web process.
    """
    limits = customer.limits
    if cost > limits.burst:
        raise BatchOverBurst(
            f"The request holds {cost} messages; the burst allowance is {limits.burst}.",
            {"messages": [f"At most {limits.burst} messages per request on this plan."]},
        )
    moment = now or datetime.now(UTC)
    day, month = quotas.periods(moment)
    link = counters.link()
    cid, prefix = customer.pk, link.prefix
    keys = [
        f"{prefix}b:{cid}",
        f"{prefix}d:{cid}:{day.label}",
        f"{prefix}m:{cid}:{month.label}",
        _lock_key(prefix, ip),
        abuse.window_key(prefix, cid, moment),
    ]
    args = [
        repr(1e6 / limits.rate_per_second),
        str(limits.burst),
        str(cost),
        str(reserve),
        str(limits.daily_quota),
        str(limits.monthly_quota),
        str(settings.MAILQ_ABUSE_WINDOW_SECONDS * 2),
        "" if now is None else str((now - _EPOCH) // timedelta(microseconds=1)),
    ]
    result = counters.call(lambda link: link.run(_TAKE, keys, args), link)
    if result is not None and result[0] == SEED:
        seeded = counters.call(lambda link: _seed(link, customer, keys[1:3], day, month, moment))
        if seeded is not None:
            result = counters.call(lambda link: link.run(_TAKE, keys, args), link)
    if result is None or result[0] == SEED:
        return None
    outcome, retry_us, remaining, reset_us, used_day, used_month, *window = result
    if outcome == LOCKED:
        raise _locked_out(retry_us / 1e6)
    reserved = outcome == OK and reserve > 0
    return Decision(
        customer=customer,
        limits=limits,
        periods=(day, month),
        now=moment,
        outcome=outcome,
        retry_us=retry_us,
        remaining=remaining,
        reset_us=reset_us,
        used=(used_day, used_month),
        window=abuse.Window(*window),
        reservation=quotas.Reservation(cid, reserve, tuple(keys[1:3])) if reserved else None,
    )


def _seed(
    link: counters.Link,
    customer: Customer,
    keys: list[str],
    day: quotas.Period,
    month: quotas.Period,
    now: datetime,
) -> bool:
    """Create missing quota counters from PostgreSQL's exact usage (SET NX: first one wins)."""
    used_day, used_month = Usage.objects.totals(customer.pk, day.start)
    pipe = link.client.pipeline(transaction=False)
    for key, used, period in ((keys[0], used_day, day), (keys[1], used_month, month)):
        ttl = period.seconds_left(now) + _COUNTER_GRACE_SECONDS
        pipe.set(key, used, nx=True, ex=ttl)
    pipe.execute()
    return True


def give_back(reservation: quotas.Reservation) -> None:
    """Return a request's unused reserved messages to its quota counters."""
    counters.call(
        lambda link: link.run(_GIVE_BACK, list(reservation.keys), [str(reservation.unused)])
    )


# --- failed authentication per client IP (django-ratelimit) --------------------------------


def client_ip(request: HttpRequest) -> str:
    """The client's address (MAILQ_CLIENT_IP_META names the META key); IPv6 by its /64."""
    raw = (request.META.get(settings.MAILQ_CLIENT_IP_META) or "unknown").split(",")[0].strip()
    if ":" not in raw:
        return raw  # IPv4, as the server or proxy wrote it (ipaddress costs 50 us per request)
    try:
        network = ipaddress.ip_network(f"{raw}/64", strict=False)
    except ValueError:
        return raw
    return str(network.network_address)


def _locked_out(seconds: float) -> RateLimited:
    return RateLimited(
        "Too many failed authentication attempts from this address; try again later.",
        retry_after=math.ceil(seconds),
    )


def _lock_key(prefix: str, ip: str) -> str:
    """The Redis key whose presence locks `ip` out (after too many failed authentications)."""
    return f"{prefix}lock:{ip}"


def check_lockout(request: HttpRequest) -> None:
    """Raise 429 while the request's IP is locked out: for a sign-in outside the API (the
    status page's key form), which the throttle script does not see."""
    if not settings.MAILQ_THROTTLING:
        return
    ip = client_ip(request)
    lock_ms = counters.call(lambda link: link.client.pttl(_lock_key(link.prefix, ip)))
    if lock_ms is not None and lock_ms > 0:
        raise _locked_out(lock_ms / 1000)


def auth_failed(request: HttpRequest) -> None:
    """Count a failed authentication from the request's IP; raise 429 while it is locked out.

    Past MAILQ_AUTH_FAILURE_RATE the IP is locked out for MAILQ_AUTH_LOCKOUT_SECONDS: every
    request from it answers 429, a right key as well as a wrong one (the throttle script checks
    the lock), so a guesser learns nothing during the cool-down.
    """
    if not settings.MAILQ_THROTTLING:
        return
    ip = client_ip(request)

    def count(link: counters.Link) -> int:
        lock = _lock_key(link.prefix, ip)
        over = is_ratelimited(
            request,
            group="mailq.auth_failures",
            key=lambda group, request: ip,
            rate=settings.MAILQ_AUTH_FAILURE_RATE,
            increment=True,
        )
        if over:
            link.client.set(lock, 1, ex=settings.MAILQ_AUTH_LOCKOUT_SECONDS)
            return settings.MAILQ_AUTH_LOCKOUT_SECONDS * 1000
        return link.client.pttl(lock)

    lock_ms = counters.call(count)
    if lock_ms is not None and lock_ms > 0:
        raise _locked_out(lock_ms / 1000)


# --- DRF and the middleware ------------------------------------------------------------------


class CustomerThrottle(BaseThrottle):
    """Every authenticated API request passes here (REST_FRAMEWORK DEFAULT_THROTTLE_CLASSES).

    A view that sends mail says how many messages a request holds with `throttle_messages`;
    those are its cost and its quota reservation. Other requests cost one and reserve nothing.
    """

    def allow_request(self, request: Request, view: "APIView") -> bool:
        customer = request.user
        if not settings.MAILQ_THROTTLING or not isinstance(customer, Customer):
            return True
        messages, unreadable = 0, None
        counter = getattr(view, "throttle_messages", None)
        if counter is not None:
            try:
                messages = counter(request)
            except APIException as exc:
                # An unparsable body still costs one unit; its 400 is answered afterwards
                # (DRF parses once, so the view would not see the error again).
                unreadable = exc
        decision = take(customer, max(messages, 1), messages, client_ip(request))
        if decision is not None:
            request._request.mailq_throttle = decision
            if decision.reservation is not None:
                quotas.hold(decision.reservation)  # `quotas.record` counts what is accepted
            refusal = decision.refusal()
            if refusal is not None:
                abuse.observe(customer, decision.window)
                raise refusal
        if unreadable is not None:
            raise unreadable
        return True


class RateLimitMiddleware:
    """After the view: RateLimit headers, unused reservations back, invalid requests counted."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            response = self.get_response(request)
        finally:
            quotas.release_held()
        decision: Decision | None = getattr(request, "mailq_throttle", None)
        if decision is not None:
            decision.give_back_unused()
            for name, value in decision.headers().items():
                response[name] = value
            if response.status_code in INVALID_STATUSES:
                abuse.count_invalid(decision.customer)
        return response
