"""Routing: the one place that decides which queue a message goes to, and when.

`admit` decides, before the insert, whether an accepted message is released now (`queued`)
or waits in PostgreSQL (`deferred`, e.g. a future `send_at`). `publish` hands released
messages to RabbitMQ, after their rows are committed, with publisher confirms, and records
`published_at`. A publish that fails is not an error for the caller: the row is committed,
so the sweeper finds it (queued, never published) and publishes it again.

Tasks are published by name, so this module does not import the worker side.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import KombuError, OperationalError

from delivery.models import Message, Status
from mailq.celery import app

log = logging.getLogger(__name__)

DELIVER_TASK = "delivery.tasks.deliver"
DELIVER_BATCH_TASK = "delivery.tasks.deliver_batch"

# Fail fast when the broker is away: the request already committed, the sweeper retries.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


def admit(messages: Iterable[Message]) -> None:
    """Set the initial status of new (unsaved) messages."""
    now = timezone.now()
    for message in messages:
        if message.send_at is not None and message.send_at > now:
            message.status = Status.DEFERRED
            message.release_at = message.send_at
        else:
            message.status = Status.QUEUED
            message.queued_at = now


def publish_after_commit(messages: Sequence[Message]) -> None:
    """Publish the queued ones among `messages` once the current transaction commits."""
    queued = [(str(m.id), m.queue) for m in messages if m.status == Status.QUEUED]
    if queued:
        transaction.on_commit(lambda: publish(queued))


def publish(id_queue_pairs: Sequence[tuple[str, str]]) -> int:
    """Publish committed, queued messages to their queues; return how many were confirmed.

    One id goes as `deliver(id)` (the real-time path); several go as `deliver_batch(ids)`
    in chunks, so a backlog costs one task per chunk, not one per message.
    """
    by_queue: dict[str, list[str]] = defaultdict(list)
    for message_id, queue in id_queue_pairs:
        by_queue[queue].append(message_id)

    confirmed: list[str] = []
    for queue, ids in by_queue.items():
        size = settings.MAILQ_TASK_BATCH_SIZE
        for chunk in (ids[i : i + size] for i in range(0, len(ids), size)):
            try:
                _send(queue, chunk)
            except (OperationalError, KombuError, OSError) as exc:
                log.warning("publish to %s failed (%s); the sweeper will retry", queue, exc)
                continue
            confirmed.extend(chunk)
    if confirmed:
        Message.objects.filter(id__in=confirmed, published_at__isnull=True).update(
            published_at=timezone.now()
        )
    return len(confirmed)


def _send(queue: str, ids: list[str]) -> None:
    if len(ids) == 1:
        name, args = DELIVER_TASK, [ids[0]]
    else:
        name, args = DELIVER_BATCH_TASK, [ids]
    app.send_task(
        name,
        args=args,
        queue=queue,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )
