"""Processes die; accepted mail is still sent. Real worker processes, killed with SIGKILL."""

import os
import signal
import time

import pytest
from django.utils import timezone

from customers.models import Customer
from delivery import sweeper
from delivery.models import Message, Status
from tests.conftest import wait_until
from tests.factories import accepted

pytestmark = pytest.mark.e2e


def sweep_until_all_sent(total: int, timeout: float) -> bool:
    """Run the sweeper (as beat would) until every message is sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweeper.sweep()
        if Message.objects.filter(status=Status.SENT).count() == total:
            return True
        time.sleep(0.5)
    return False


def test_a_worker_killed_mid_batch_loses_nothing(alice, start_worker, smtp_sink, settings):
    settings.MAILQ_SENDING_LEASE_SECONDS = 2
    Customer.objects.filter(pk=alice.customer.pk).update(inflight_cap=50)
    alice.customer.refresh_from_db()
    smtp_sink.delay = 0.01
    worker = start_worker(concurrency=1)
    messages = accepted(alice.customer, count=300)  # 50 in flight, 250 deferred
    assert sum(m.status == Status.DEFERRED for m in messages) == 250

    assert wait_until(lambda: len(smtp_sink.received) >= 30, timeout=30)
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)  # mid-batch: some claimed messages are still unsent

    assert sweep_until_all_sent(300, timeout=90), Message.objects.exclude(
        status=Status.SENT
    ).values_list("status", flat=True)
    counts = smtp_sink.by_message_id()
    assert set(counts) == {str(m.id) for m in messages}  # nothing lost
    # Sent but not yet recorded when the process died: at most one recording group.
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= settings.MAILQ_RECORD_EVERY, counts
    print(f"accepted 300, sent {len(counts)}, duplicates {duplicates}")


def test_a_refill_lost_with_its_worker_is_done_by_the_reconciler(alice, start_worker, smtp_sink):
    Customer.objects.filter(pk=alice.customer.pk).update(inflight_cap=5)
    alice.customer.refresh_from_db()
    messages = accepted(alice.customer, count=20)
    # As if the worker that sent the first five died before it could refill.
    Message.objects.filter(status=Status.QUEUED).update(status=Status.SENT)
    start_worker(concurrency=1)
    assert sweep_until_all_sent(20, timeout=60)
    assert len(smtp_sink.received) == 15
    assert {m["X-Mailq-Message-Id"] for m in smtp_sink.received} == {
        str(m.id) for m in messages[5:]
    }


def test_a_queue_declared_differently_is_replaced_and_its_messages_republished(alice, broker):
    from delivery import queues
    from mailq.celery import app
    from tests.factories import queue

    [message] = accepted(alice.customer)  # published to the express lane
    name = message.queue
    assert name == queue("standard", express=True)
    with app.connection_for_write() as conn:  # as an older version might have left it
        conn.channel().queue_delete(name)
        conn.channel().queue_declare(name, durable=True, arguments={"x-max-priority": 3})
    Message.objects.filter(pk=message.pk).update(published_at=timezone.now())

    assert queues.ensure([name]) == [name]
    assert Message.objects.get(pk=message.pk).published_at is None  # the sweeper's to publish
    assert queues.ensure([name]) == []
