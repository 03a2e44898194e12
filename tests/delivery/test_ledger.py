"""At-least-once delivery from the broker, exactly one email: the claim is the ledger."""

import pytest

from delivery.models import Message, Status
from mailq.celery import app
from tests.conftest import wait_until
from tests.factories import accepted, queue

pytestmark = pytest.mark.e2e


def test_two_workers_given_the_same_message_send_it_once(alice, start_worker, smtp_sink):
    start_worker(concurrency=1)
    start_worker(concurrency=1)
    messages = accepted(alice.customer, count=20)  # each published once already
    ids = [str(m.id) for m in messages]
    # Redeliver every id several times over, as single and batch tasks, to both workers.
    for _ in range(3):
        for message_id in ids:
            app.send_task("delivery.tasks.deliver", args=[message_id], queue=queue("standard"))
        app.send_task("delivery.tasks.deliver_batch", args=[ids], queue=queue("standard"))

    assert wait_until(lambda: Message.objects.filter(status=Status.SENT).count() == 20)
    # Give the redundant tasks time to be consumed, then count at the SMTP server.
    wait_until(lambda: False, timeout=2)
    counts = smtp_sink.by_message_id()
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}, counts
    assert all(m.attempts == 1 for m in Message.objects.all())
