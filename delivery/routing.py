"""Routing: the one place that decides which queue a message goes to, and when.

Fair share (MAILQ_ROUTING=fair, the default) keeps the broker short: each customer may have at
most its in-flight cap of messages `queued` or `sending`; the rest of a burst waits in
PostgreSQL as `deferred` and is released as that customer's messages finish. A quiet customer
(fewer than MAILQ_EXPRESS_INFLIGHT messages in flight) takes the express lane: its own queue
and worker processes, so it never waits behind another customer's backlog, nor behind the
batch tasks the tier's pool is executing.
See docs/fair-share.md for the mechanism and its bound.

`fifo` publishes everything at once to the tier queue, as a naive system does; it exists so a
benchmark can show the difference.

Tasks are published by name, so this module does not import the worker side. A publish that
fails is not an error for the caller: the row is committed, so the sweeper finds it (queued,
never published) and publishes it again.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import KombuError

from customers.models import Customer
from delivery.models import REDRIVABLE, Message, Status
from delivery.queues import express_queue, is_express
from mailq.celery import app

log = logging.getLogger(__name__)

DELIVER_TASK = "delivery.tasks.deliver"
DELIVER_BATCH_TASK = "delivery.tasks.deliver_batch"

# Fail fast when the broker is away: the request already committed, the sweeper retries.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}

# Namespace of the advisory locks that serialise one customer's releases.
_REFILL_LOCK = 0x6D71  # "mq"


def fair() -> bool:
    return settings.MAILQ_ROUTING == "fair"


# --- accepting ------------------------------------------------------------------------------

_FLOW_SQL = """
    SELECT (SELECT count(*) FROM delivery_message
             WHERE customer_id = %(c)s AND status IN ('queued', 'sending')),
           EXISTS (SELECT 1 FROM delivery_message
                    WHERE customer_id = %(c)s AND status = 'deferred' AND release_at IS NULL)
"""


def admit(customer: Customer, messages: Sequence[Message]) -> None:
    """Set the initial status and queue of one customer's new (unsaved) messages.

    Fair mode: messages that fit in the customer's free in-flight slots are queued at once,
    the first ones on the express lane while the customer is quiet; if the customer already
    has a backlog, new messages wait behind it (a customer's messages keep their order).
    """
    now = timezone.now()
    due = []
    for message in messages:
        if message.send_at is not None and message.send_at > now:
            message.status, message.release_at = Status.DEFERRED, message.send_at
        else:
            due.append(message)
    inflight, free = 0, len(due)
    if fair() and due:
        inflight, free = _flow(customer)
    express = max(settings.MAILQ_EXPRESS_INFLIGHT - inflight, 0) if fair() else 0
    for index, message in enumerate(due):
        if index < free:
            message.status, message.queued_at = Status.QUEUED, now
            if index < express:
                message.queue = express_queue(message.queue)
        else:
            message.status = Status.DEFERRED  # backlog: release_at stays NULL


def _flow(customer: Customer) -> tuple[int, int]:
    """(messages in flight, free slots) of a customer."""
    cap = customer.effective_inflight_cap
    if cap == 0:
        return 0, 0
    with connection.cursor() as cursor:
        cursor.execute(_FLOW_SQL, {"c": customer.pk})
        inflight, has_backlog = cursor.fetchone()
    # Two concurrent requests may both see the same free slots: the cap can be exceeded by
    # at most one request's worth per web worker, and it corrects itself as messages finish.
    return inflight, 0 if has_backlog else max(cap - inflight, 0)


def publish_after_commit(messages: Sequence[Message]) -> None:
    """Publish the queued ones among `messages` once the current transaction commits."""
    queued = [(str(m.id), m.queue, m.customer_id) for m in messages if m.status == Status.QUEUED]
    if queued:
        transaction.on_commit(lambda: publish(queued, mark_express=False))


# --- publishing -----------------------------------------------------------------------------


def publish(rows: Sequence[tuple[str, str, int]], *, mark_express: bool = True) -> int:
    """Publish committed, queued messages, given as (id, queue, customer id) rows, to their
    queues; return how many were confirmed.

    One id goes as `deliver(id)` (the real-time path); several go as `deliver_batch(ids)`
    in chunks, so a backlog costs one task per chunk, not one per message.

    A confirmed publish is marked (`published_at`), so the sweeper leaves it alone. Accepting
    passes `mark_express=False`: an express task is claimed within milliseconds, and the mark
    would be a second write of every quiet message's row (a new row version in each of its
    indexes). An express message still queued after MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS (its
    worker is down, or the publish was lost) is published once more by the sweeper, which
    marks it; the claim lets one delivery through.
    """
    by_queue: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for message_id, queue, customer_id in rows:
        by_queue[queue].append((message_id, customer_id))

    confirmed, marked = 0, []
    for queue, items in by_queue.items():
        size = settings.MAILQ_TASK_BATCH_SIZE
        for start in range(0, len(items), size):
            chunk = [message_id for message_id, _ in items[start : start + size]]
            customers = [customer for _, customer in items[start : start + size]]
            try:
                _send(queue, chunk, customers)
            except _broker_errors() as exc:
                log.warning("publish to %s failed (%s); the sweeper will retry", queue, exc)
                continue
            confirmed += len(chunk)
            if mark_express or not is_express(queue):
                marked.extend(chunk)
    if marked:
        with connection.cursor() as cursor:
            cursor.execute(_MARK_PUBLISHED_SQL, [timezone.now(), marked])
    return confirmed


_MARK_PUBLISHED_SQL = """
    UPDATE delivery_message SET published_at = %s
     WHERE id = ANY(%s::uuid[]) AND published_at IS NULL
"""


@cache
def _broker_errors() -> tuple[type[BaseException], ...]:
    """Everything a publish can raise when the broker is away or refuses (kombu, amqp, OS)."""
    with app.connection_for_write() as conn:
        return (KombuError, OSError, *conn.connection_errors, *conn.channel_errors)


def _send(queue: str, ids: list[str], customer_ids: list[int]) -> None:
    if len(ids) == 1:
        name, args = DELIVER_TASK, [ids[0]]
    else:
        name, args = DELIVER_BATCH_TASK, [ids]
    # What Flower and worker logs show (the task takes only ids): the customer beside them.
    customers = sorted(set(customer_ids))
    shown = {"customer": customers[0]} if len(customers) == 1 else {"customers": customers}
    app.send_task(
        name,
        args=args,
        queue=queue,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
        kwargsrepr=repr(shown),
    )


# --- releasing ------------------------------------------------------------------------------

# Release the customer's oldest deferred messages into its free in-flight slots, into its
# current tier's queue. The advisory lock serialises concurrent refills of one customer, so
# two finishing workers cannot both fill the same free slots. Slots are released a chunk at
# a time (a task's worth, at most a quarter of the cap): a backlog then travels as batch
# tasks, not one task per freed slot, while the rest of the window keeps the workers busy.
_REFILL_SQL = """
    WITH cap AS (
        SELECT CASE WHEN c.sending_paused THEN 0
                    ELSE COALESCE(c.inflight_cap, t.inflight_cap) END AS n,
               t.queue
          FROM customers_customer c JOIN customers_tier t ON t.id = c.tier_id
         WHERE c.id = %(c)s),
    free AS (
        SELECT cap.n - (SELECT count(*) FROM delivery_message
                         WHERE customer_id = %(c)s AND status IN ('queued', 'sending')) AS n,
               LEAST(%(chunk)s, GREATEST(cap.n / 4, 1)) AS chunk
          FROM cap),
    picked AS (
        SELECT id FROM delivery_message
         WHERE customer_id = %(c)s AND status = 'deferred' AND release_at IS NULL
         ORDER BY accepted_at
         LIMIT (SELECT CASE WHEN n >= chunk THEN n ELSE 0 END FROM free)
           FOR UPDATE SKIP LOCKED)
    UPDATE delivery_message m
       SET status = 'queued', queued_at = %(now)s, published_at = NULL,
           queue = (SELECT queue FROM cap)
      FROM picked
     WHERE m.id = picked.id
 RETURNING m.id::text, m.queue, m.customer_id
"""


# Which of these customers have a backlog: one index probe (message_backlog) per customer.
# LATERAL + LIMIT 1 keeps it a probe: written as EXISTS, the planner may merge-join the ids
# with the whole backlog index, reading a bursting customer's 100,000 entries to answer for a
# quiet customer whose id sorts after it (17 ms instead of 0.05 ms, on every finished task).
_BACKLOGGED_SQL = """
    SELECT c.id FROM unnest(%s::bigint[]) AS c(id)
     CROSS JOIN LATERAL (
         SELECT 1 FROM delivery_message
          WHERE customer_id = c.id AND status = 'deferred' AND release_at IS NULL
          LIMIT 1) AS backlog
     ORDER BY c.id
"""


def refill(customer_ids: Iterable[int]) -> int:
    """Release deferred messages of these customers into their free in-flight slots."""
    if not fair():
        return 0
    ids = sorted(set(customer_ids))
    if not ids:
        return 0
    # Most finishing tasks belong to quiet customers with nothing deferred: one read tells,
    # instead of a locked transaction per customer. A message deferred just after this read
    # (an accept racing the finish) is the race the reconciler already covers.
    with connection.cursor() as cursor:
        cursor.execute(_BACKLOGGED_SQL, [ids])
        backlogged = [row[0] for row in cursor.fetchall()]
    released = 0
    for customer_id in backlogged:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_REFILL_LOCK, customer_id])
            cursor.execute(
                _REFILL_SQL,
                {"c": customer_id, "now": timezone.now(), "chunk": settings.MAILQ_TASK_BATCH_SIZE},
            )
            rows = cursor.fetchall()
        # Published after the commit; a crash in between leaves them queued and unpublished,
        # which the sweeper republishes.
        if rows:
            publish(rows)
            released += len(rows)
    return released


# The customers with a backlog, oldest backlog first: a skip scan of the backlog index (one
# probe per customer), not a GROUP BY over every deferred message (40 ms at a 56,000-message
# backlog, every sweep).
_BACKLOG_CUSTOMERS_SQL = """
    WITH RECURSIVE backlogged(id) AS (
        (SELECT customer_id FROM delivery_message
          WHERE status = 'deferred' AND release_at IS NULL
          ORDER BY customer_id LIMIT 1)
        UNION ALL
        SELECT (SELECT customer_id FROM delivery_message
                 WHERE status = 'deferred' AND release_at IS NULL AND customer_id > b.id
                 ORDER BY customer_id LIMIT 1)
          FROM backlogged b WHERE b.id IS NOT NULL)
    SELECT b.id FROM backlogged b
     CROSS JOIN LATERAL (
         SELECT accepted_at FROM delivery_message
          WHERE customer_id = b.id AND status = 'deferred' AND release_at IS NULL
          ORDER BY accepted_at LIMIT 1) AS oldest
     WHERE b.id IS NOT NULL
     ORDER BY oldest.accepted_at
"""


def reconcile() -> int:
    """Release stragglers of every customer with a backlog (after a crash, a resume, a cap
    change, or a race between accepting and finishing). Oldest backlog first."""
    if not fair():
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_BACKLOG_CUSTOMERS_SQL)
        customer_ids = [row[0] for row in cursor.fetchall()]
    return sum(refill([customer_id]) for customer_id in customer_ids)


# Scheduled sends whose time has come and retries whose backoff has passed. In fair mode they
# join their customer's backlog (in acceptance order) and are released within its cap;
# in fifo mode they are queued and published at once.
_DUE_SQL = """
    UPDATE delivery_message
       SET status = %(status)s, release_at = NULL, queued_at = %(queued_at)s,
           published_at = NULL
     WHERE id IN (
         SELECT id FROM delivery_message
          WHERE status IN ('deferred', 'retrying') AND release_at <= %(now)s
          ORDER BY release_at
          LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED)
 RETURNING id::text, queue, customer_id
"""


def release_due() -> int:
    now = timezone.now()
    params = {"now": now, "limit": settings.MAILQ_SWEEP_BATCH}
    if fair():
        params |= {"status": Status.DEFERRED.value, "queued_at": None}
    else:
        params |= {"status": Status.QUEUED.value, "queued_at": now}
    with connection.cursor() as cursor:
        cursor.execute(_DUE_SQL, params)
        rows = cursor.fetchall()
    if fair():
        refill(row[2] for row in rows)
    else:
        publish(rows)
    return len(rows)


# --- redriving dead letters -----------------------------------------------------------------

# A fresh set of attempts (the attempt rows stay: they are the history), into the customer's
# current tier queue. Fair mode: the message joins its customer's backlog and is released within
# its cap, like any other; fifo: queued and published at once. The status condition makes a
# redrive race-free: of two operators redriving the same message, one wins.
_REDRIVE_SQL = """
    UPDATE delivery_message m
       SET status = %(status)s, attempts = 0, last_error = '', provider = '',
           release_at = NULL, sending_at = NULL, finished_at = NULL,
           queued_at = %(queued_at)s, published_at = NULL, queue = t.queue
      FROM customers_customer c JOIN customers_tier t ON t.id = c.tier_id
     WHERE m.id = ANY(%(ids)s::uuid[]) AND m.status = ANY(%(redrivable)s)
       AND c.id = m.customer_id
 RETURNING m.id::text, m.queue, m.customer_id
"""


def redrive(message_ids: Iterable[str]) -> list[str]:
    """Send dead or failed messages again; returns the ids that were dead or failed (others are
    left alone). The admin's redrive action and `POST /v1/messages/{id}/redrive` both call this."""
    params = {
        "ids": [str(i) for i in message_ids],
        "redrivable": [s.value for s in REDRIVABLE],
    }
    if fair():
        params |= {"status": Status.DEFERRED.value, "queued_at": None}
    else:
        params |= {"status": Status.QUEUED.value, "queued_at": timezone.now()}
    with connection.cursor() as cursor:
        cursor.execute(_REDRIVE_SQL, params)
        rows = cursor.fetchall()
    # After the commit (at once outside a transaction), so no task points at an uncommitted row.
    if fair():
        customer_ids = {row[2] for row in rows}
        transaction.on_commit(lambda: refill(customer_ids))
    else:
        transaction.on_commit(lambda: publish(rows))
    return [row[0] for row in rows]
