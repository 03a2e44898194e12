"""Daily and monthly message quotas: periods, exact usage, and the request's reservation.

Usage is counted once per accepted message, in two places with different jobs:

- PostgreSQL (`Usage`) is the exact, durable count, and what the admin and `GET /v1/usage` show.
  `record` writes it in the transaction that inserts the messages (delivery/intake.py), so a
  rolled-back insert is not counted, an idempotent replay inserts nothing and counts nothing, and
  a batch's invalid items are never inserted.
- Redis holds one counter per customer and period, which the throttle (customers/throttling.py)
  checks and increments atomically before the view runs: it *reserves* the request's messages,
  so concurrent requests cannot overshoot a quota. What the request did not use (a replay,
  invalid items, an error) is given back when the response leaves. A missing counter (a new
  period, or Redis was flushed) is first seeded from PostgreSQL, so enforcement survives a flush.

The only drift between the two: a web process dying between reserve and give-back leaves its
reservation counted in Redis (the customer loses at most one request's messages until the period
ends); PostgreSQL stays exact. Messages accepted outside a request (`manage.py demo`) are counted
in PostgreSQL only.

Periods are UTC calendar days and months: a quota resets at 00:00 UTC.
"""

import random
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

from customers.models import Customer, Usage

# Usage rows per customer and day; see Usage. More shards, less lock contention, more rows.
USAGE_SHARDS = 8


@dataclass(frozen=True)
class Period:
    """A quota period: a UTC day or a UTC calendar month."""

    name: str  # "day" or "month"
    start: date
    end: date  # exclusive: when the quota resets

    @property
    def label(self) -> str:
        day = self.start.isoformat()
        return day if self.name == "day" else day[:7]

    @property
    def resets_at(self) -> datetime:
        return datetime.combine(self.end, time.min, tzinfo=UTC)

    @property
    def seconds(self) -> int:
        return (self.end - self.start).days * 86400

    def seconds_left(self, now: datetime) -> int:
        return max(int((self.resets_at - now).total_seconds() + 0.999), 1)


def periods(now: datetime) -> tuple[Period, Period]:
    """The day and the month that `now` (aware) falls in."""
    return _periods(now.astimezone(UTC).date())


@lru_cache(maxsize=4)  # every request asks; the answer changes once a day
def _periods(today: date) -> tuple[Period, Period]:
    first = today.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    return Period("day", today, today + timedelta(days=1)), Period("month", first, next_month)


def limit_of(customer: Customer, period: Period) -> int:
    limits = customer.limits
    return limits.daily_quota if period.name == "day" else limits.monthly_quota


# --- the request's reservation -----------------------------------------------------------------


@dataclass
class Reservation:
    """Messages the throttle reserved in Redis for one request, and how many were accepted."""

    customer_id: int
    count: int
    keys: tuple[str, ...]  # the Redis counters the count was added to
    used: int = 0

    @property
    def unused(self) -> int:
        return max(self.count - self.used, 0)


# Request-scoped: set by the throttle, filled in by `record`, cleared by the middleware that
# gives the unused part back. A ContextVar is per thread (and per task), never shared.
_reservation: ContextVar[Reservation | None] = ContextVar("mailq_reservation", default=None)


def hold(reservation: Reservation) -> None:
    _reservation.set(reservation)


def release_held() -> Reservation | None:
    """The current request's reservation (if any), now no longer current."""
    reservation = _reservation.get()
    _reservation.set(None)
    return reservation


def record(customer: Customer, count: int) -> tuple[str, list]:
    """Count `count` messages accepted for `customer`: returns the upsert, as (SQL, params), to
    run in the statement (or transaction) that inserts them. The usage row is exact because it
    commits or rolls back with the messages.
    """
    reservation = _reservation.get()
    if reservation is not None and reservation.customer_id == customer.pk:
        # If the insert then fails, the request ends in an error and Redis keeps the units: the
        # error is on the side of refusing, never of letting a customer past its quota.
        reservation.used += count
    shard = random.randrange(USAGE_SHARDS)
    return Usage.objects.add_sql(customer.pk, datetime.now(UTC).date(), shard, count)


# --- reading usage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodUsage:
    period: Period
    used: int
    limit: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


def usage(customer: Customer, now: datetime | None = None) -> tuple[PeriodUsage, PeriodUsage]:
    """The customer's exact usage of its daily and monthly quota, from PostgreSQL."""
    day, month = periods(now or datetime.now(UTC))
    used_day, used_month = Usage.objects.totals(customer.pk, day.start)
    return (
        PeriodUsage(day, used_day, limit_of(customer, day)),
        PeriodUsage(month, used_month, limit_of(customer, month)),
    )
