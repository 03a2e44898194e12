"""Abuse detection: flag, then suspend, a customer whose traffic looks broken or hostile.

Two signals, counted per customer in fixed windows of MAILQ_ABUSE_WINDOW_SECONDS by
customers/throttling.py (inside the rate-limit script, so a good request pays nothing extra):

- *invalid requests*: the share of its requests the API could not use (400, 404, 405, 413, 415,
  422), judged once the window holds the threshold's minimum number of requests;
- *refused requests*: requests refused by its rate limit or quota, i.e. a client that ignores
  429 and Retry-After and keeps hammering.

Crossing the FLAG threshold marks the customer for an operator (admin: "flagged"); crossing the
SUSPEND threshold suspends it: every API call answers 403 `customer_suspended` until an operator
reinstates it in the admin. Mail it had sent before keeps being delivered (the admin's "Pause
sending" stops that too). Thresholds are judged only when a signal is counted, i.e. on an
invalid or refused request, never on a good one; each customer is flagged and suspended once
(conditional UPDATEs) however many web processes see the threshold crossed.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings

from customers import counters
from customers.models import Customer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A customer's counts in the current abuse window."""

    requests: int
    invalid: int
    refused: int


@dataclass(frozen=True)
class Threshold:
    min_requests: int
    invalid_ratio: float
    refused: int

    @classmethod
    def from_settings(cls, level: str) -> "Threshold":
        return cls(
            min_requests=getattr(settings, f"MAILQ_ABUSE_{level}_MIN_REQUESTS"),
            invalid_ratio=getattr(settings, f"MAILQ_ABUSE_{level}_INVALID_RATIO"),
            refused=getattr(settings, f"MAILQ_ABUSE_{level}_REFUSED"),
        )

    def crossed_by(self, window: Window) -> str | None:
        """Why `window` crosses this threshold, or None."""
        seconds = settings.MAILQ_ABUSE_WINDOW_SECONDS
        if (
            window.requests >= self.min_requests
            and window.invalid >= self.invalid_ratio * window.requests
        ):
            return f"{window.invalid} of {window.requests} requests invalid within {seconds} s"
        if window.refused >= self.refused:
            return f"{window.refused} requests refused by rate limit or quota within {seconds} s"
        return None


def observe(customer: Customer, window: Window) -> None:
    """Flag or suspend `customer` when `window` crosses a threshold."""
    if not customer.is_active:
        return
    reason = Threshold.from_settings("SUSPEND").crossed_by(window)
    if reason is not None and customer.suspend(f"automatic: {reason}"):
        log.warning("suspended customer %s (%s): %s", customer.pk, customer, reason)
        return
    reason = Threshold.from_settings("FLAG").crossed_by(window)
    if reason is not None and customer.flagged_at is None and customer.flag(f"automatic: {reason}"):
        log.warning("flagged customer %s (%s): %s", customer.pk, customer, reason)


# --- the counters (Redis) ----------------------------------------------------------------------


def window_key(prefix: str, customer_id: int, now: datetime) -> str:
    """The Redis hash of the customer's window that `now` falls in (fields: requests,
    invalid, refused); the throttle script counts requests and refusals into it."""
    index = int(now.timestamp()) // settings.MAILQ_ABUSE_WINDOW_SECONDS
    return f"{prefix}w:{customer_id}:{index}"


def count_invalid(customer: Customer) -> None:
    """Count an invalid request in the customer's window, and judge the window."""
    key = window_key(counters.link().prefix, customer.pk, datetime.now(UTC))

    def count(link: counters.Link) -> list:
        pipe = link.client.pipeline(transaction=False)
        pipe.hincrby(key, "invalid", 1)
        pipe.expire(key, settings.MAILQ_ABUSE_WINDOW_SECONDS * 2)
        pipe.hmget(key, ["requests", "refused"])
        return pipe.execute()

    result = counters.call(count)
    if result is not None:
        invalid, _, (requests, refused) = result
        observe(customer, Window(int(requests or 0), invalid, int(refused or 0)))


def forget(customer: Customer) -> None:
    """Clear the customer's windows (on reinstatement: its traffic is judged afresh)."""
    now, prefix = datetime.now(UTC), counters.link().prefix
    earlier = now - timedelta(seconds=settings.MAILQ_ABUSE_WINDOW_SECONDS)
    keys = [window_key(prefix, customer.pk, moment) for moment in (now, earlier)]
    counters.call(lambda link: link.client.delete(*keys))
