"""Processes die; accepted mail is still sent. Real worker processes, killed with SIGKILL."""

import os
import signal
import time

import pytest
from django.utils import timezone

from customers.models import Customer
from delivery import sweeper
from delivery.models import Message, Status
from delivery.queues import is_express
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


def slow_backlog(account, sink, count: int = 300, delay: float = 0.01) -> list[Message]:
    """`count` messages of one customer, 50 in flight (two batch tasks: 5 on the express lane,
    45 on the tier queue), each send taking `delay` at the sink: long enough to act in the
    middle of a batch."""
    Customer.objects.filter(pk=account.customer.pk).update(inflight_cap=50)
    account.customer.refresh_from_db()
    sink.delay = delay
    messages = accepted(account.customer, count=count)
    assert sum(m.status == Status.DEFERRED for m in messages) == count - 50
    return messages


@pytest.mark.parametrize("record_every", [None, 1], ids=["default", "record-every-1"])
def test_a_worker_killed_mid_batch_loses_nothing(
    alice, start_worker, smtp_sink, settings, record_every
):
    """kill -9 of the pool process mid-batch: every accepted message is sent; the only
    duplicates are the sends the provider took and the process had not recorded yet, at most
    MAILQ_RECORD_EVERY (docs/delivery-guarantees.md)."""
    # Short, to finish soon; still several times the longest batch, so no live claim expires.
    settings.MAILQ_SENDING_LEASE_SECONDS = 5
    extra = {"MAILQ_RECORD_EVERY": str(record_every)} if record_every else {}
    bound = record_every or settings.MAILQ_RECORD_EVERY
    worker = start_worker(concurrency=1, **extra)
    messages = slow_backlog(alice, smtp_sink)

    assert wait_until(lambda: len(smtp_sink.received) >= 30, timeout=30)
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)  # mid-batch: some claimed messages are still unsent

    all_sent = sweep_until_all_sent(300, timeout=45)
    line = smtp_sink.report(messages)
    assert all_sent, (line, Message.objects.exclude(status=Status.SENT).values_list("status"))
    total, sent, duplicates = smtp_sink.tally(messages)
    assert sent == total == 300, line  # nothing lost
    # Sent but not yet recorded when the process died: at most one recording group.
    assert duplicates <= bound, f"{line} (bound {bound})"


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "main-process"])
def test_sigterm_mid_batch_finishes_in_flight_sends_records_them_and_stops_taking_work(
    alice, start_worker, smtp_sink, group
):
    """SIGTERM to the whole process group (honcho, Heroku) or to the main process only
    (`kill`, Docker): the in-flight task records every send it made and leaves nothing
    `sending`; the worker exits promptly and takes no new task. A group SIGTERM reaches the
    pool process too, which then stops after the send in hand and hands the rest back."""
    worker = start_worker(concurrency=1)
    messages = slow_backlog(alice, smtp_sink, count=200, delay=0.02)
    assert wait_until(lambda: len(smtp_sink.received) >= 10, timeout=30)

    started = time.monotonic()
    if group:
        os.killpg(worker.proc.pid, signal.SIGTERM)  # the worker runs in a session of its own
    else:
        worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=10) == 0
    stopped_in = time.monotonic() - started

    # Every email that left is recorded `sent`; nothing is left claimed.
    received = smtp_sink.by_message_id()
    assert set(received.values()) == {1}
    sent = set(Message.objects.filter(status=Status.SENT).values_list("id", flat=True))
    assert {str(i) for i in sent} == set(received)
    assert not Message.objects.filter(status=Status.SENDING).exists()
    # The batch in hand when the signal came: the 45 messages released to the tier queue.
    in_hand = {m.id for m in messages if m.status == Status.QUEUED and not is_express(m.queue)}
    assert len(in_hand) == 45
    if group:
        assert not in_hand <= sent, "the batch in hand was cut short, not sent to its end"
    else:
        assert in_hand <= sent, "the batch in hand ran to its end"
    # It takes no new work: what it released or handed back waits in the queue.
    assert not wait_until(lambda: len(smtp_sink.received) > len(received), timeout=1)
    assert Message.objects.filter(status=Status.QUEUED).exists()

    start_worker(concurrency=1)
    smtp_sink.delay = 0
    all_sent = sweep_until_all_sent(200, timeout=30)
    line = smtp_sink.report(messages)
    print(f"stopped in {stopped_in:.2f} s with {len(sent)} sent")
    assert all_sent, line
    assert smtp_sink.tally(messages) == (200, 200, 0), line


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
