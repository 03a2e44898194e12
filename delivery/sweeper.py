"""The sweeper: periodic repair so that nothing accepted is lost or stuck.

Each step claims one bounded batch with a conditional UPDATE (SKIP LOCKED, so concurrent
sweepers split the work instead of doing it twice), publishes it, and returns a count.
No transaction is held while publishing.
"""

from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from delivery import routing

# Queued, accepted a while ago, never confirmed by the broker: the publish was lost.
_UNPUBLISHED_SQL = """
    SELECT id::text, queue FROM delivery_message
     WHERE status = 'queued' AND published_at IS NULL AND accepted_at < %s
     ORDER BY accepted_at
     LIMIT %s
"""

# Due deferred/retrying messages, or messages whose `sending` lease expired (dead worker):
# move them back to queued, clearing published_at, and return them for publishing.
_REQUEUE_SQL = """
    UPDATE delivery_message SET status = 'queued', queued_at = %(now)s, published_at = NULL
     WHERE id IN (
         SELECT id FROM delivery_message
          WHERE {condition}
          ORDER BY {order}
          LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED)
 RETURNING id::text, queue
"""
_DUE = "status IN ('deferred', 'retrying') AND release_at <= %(now)s"
_LEASE_EXPIRED = "status = 'sending' AND sending_at < %(lease)s"


def republish_unpublished() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(_UNPUBLISHED_SQL, [cutoff, settings.MAILQ_SWEEP_BATCH])
        rows = cursor.fetchall()
    # A duplicate publish (two sweepers, or a web process that published but died before
    # recording it) is harmless: the claim in sending.py lets only one delivery through.
    return routing.publish(rows)


def _requeue(condition: str, order: str, **params) -> int:
    params |= {"now": timezone.now(), "limit": settings.MAILQ_SWEEP_BATCH}
    with connection.cursor() as cursor:
        cursor.execute(_REQUEUE_SQL.format(condition=condition, order=order), params)
        rows = cursor.fetchall()
    routing.publish(rows)
    return len(rows)


def release_due() -> int:
    """Scheduled sends whose time has come and retries whose backoff has passed."""
    return _requeue(_DUE, "release_at")


def reclaim_expired_leases() -> int:
    """Messages claimed by a worker that died mid-send. They may be sent twice (documented)."""
    lease = timezone.now() - timedelta(seconds=settings.MAILQ_SENDING_LEASE_SECONDS)
    return _requeue(_LEASE_EXPIRED, "sending_at", lease=lease)


def sweep() -> dict[str, int]:
    return {
        "republished": republish_unpublished(),
        "released": release_due(),
        "reclaimed": reclaim_expired_leases(),
    }
