"""The sweeper: periodic repair so that nothing accepted is lost or stuck (and housekeeping:
statistics rollups past their retention are deleted, a bounded batch per sweep).

Each step claims one bounded batch with a conditional UPDATE (SKIP LOCKED, so concurrent
sweepers split the work instead of doing it twice), publishes it, and returns a count.
No transaction is held while publishing.
"""

from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from delivery import routing, stats

# Queued a while ago, never confirmed by the broker: the publish was lost.
_UNPUBLISHED_SQL = """
    SELECT id::text, queue, customer_id FROM delivery_message
     WHERE status = 'queued' AND published_at IS NULL AND queued_at < %s
     ORDER BY queued_at
     LIMIT %s
"""

# Queued and published long ago, never claimed: the task is gone from the broker (a lost disk,
# a queue purged by hand). Fair mode only: there the broker holds at most the customers' caps,
# so nothing waits this long in it unless lost, and the scan (on the in-flight partial index)
# stays small. In fifo a backlog may legitimately wait for hours.
# published_at is cleared in the same statement, so the new publish records its confirmation.
_STALE_SQL = """
    UPDATE delivery_message SET published_at = NULL
     WHERE id IN (
         SELECT id FROM delivery_message
          WHERE status = 'queued' AND published_at < %s
          LIMIT %s
            FOR UPDATE SKIP LOCKED)
 RETURNING id::text, queue, customer_id
"""

# Messages whose `sending` lease expired (a dead worker): back to queued, for publishing.
_RECLAIM_SQL = """
    UPDATE delivery_message SET status = 'queued', queued_at = %(now)s, published_at = NULL
     WHERE id IN (
         SELECT id FROM delivery_message
          WHERE status = 'sending' AND sending_at < %(lease)s
          ORDER BY sending_at
          LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED)
 RETURNING id::text, queue, customer_id
"""


def republish_unpublished() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(_UNPUBLISHED_SQL, [cutoff, settings.MAILQ_SWEEP_BATCH])
        rows = cursor.fetchall()
    # A duplicate publish (two sweepers, or a web process that published but died before
    # recording it) is harmless: the claim in sending.py lets only one delivery through.
    return routing.publish(rows)


def republish_stale() -> int:
    """Publish again the queued messages whose task the broker lost. A task that was only slow
    is harmless twice: the claim lets one delivery through."""
    if not routing.fair():
        return 0
    cutoff = timezone.now() - timedelta(seconds=settings.MAILQ_SWEEP_STALE_QUEUED_AFTER_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(_STALE_SQL, [cutoff, settings.MAILQ_SWEEP_BATCH])
        rows = cursor.fetchall()
    return routing.publish(rows)


def reclaim_expired_leases() -> int:
    """Messages claimed by a worker that died mid-send. They may be sent twice (documented)."""
    now = timezone.now()
    params = {
        "now": now,
        "lease": now - timedelta(seconds=settings.MAILQ_SENDING_LEASE_SECONDS),
        "limit": settings.MAILQ_SWEEP_BATCH,
    }
    with connection.cursor() as cursor:
        cursor.execute(_RECLAIM_SQL, params)
        rows = cursor.fetchall()
    routing.publish(rows)
    return len(rows)


def sweep() -> dict[str, int]:
    """One pass of every repair; each step is bounded by MAILQ_SWEEP_BATCH."""
    return {
        "republished": republish_unpublished(),
        "stale": republish_stale(),
        "due": routing.release_due(),
        "reclaimed": reclaim_expired_leases(),
        "reconciled": routing.reconcile(),
        "pruned": stats.prune(timezone.now()),
    }
