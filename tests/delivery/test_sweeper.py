"""The sweeper repairs what a crash or a lost publish left behind; a real worker then sends."""

from datetime import timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from delivery import routing, sweeper
from delivery.models import Message, Status
from delivery.queues import is_express
from mailq.celery import app
from tests.conftest import wait_until
from tests.factories import accepted

pytestmark = pytest.mark.e2e


def statuses() -> list[str]:
    return list(Message.objects.values_list("status", flat=True))


def test_a_publish_lost_between_commit_and_broker_is_republished(
    alice, worker, smtp_sink, monkeypatch, settings
):
    def broker_away(*args, **kwargs):
        raise OperationalError("connection refused (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(app, "send_task", broker_away)
        response = alice.client.post(
            "/v1/messages",
            {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana"}},
            format="json",
        )
    # The row is committed, so the client still gets its 202: the message is safe.
    assert response.status_code == 202
    message = Message.objects.get(pk=response.json()["id"])
    assert message.status == Status.QUEUED and message.published_at is None

    # Not yet old enough: a publish may still be in progress.
    assert sweeper.republish_unpublished() == 0
    settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS = 0
    assert sweeper.republish_unpublished() == 1
    assert len(smtp_sink.wait_for(1)) == 1
    assert wait_until(lambda: statuses() == [Status.SENT])
    assert Message.objects.get().published_at is not None
    assert sweeper.republish_unpublished() == 0


def test_a_retry_is_released_when_its_backoff_has_passed(alice, worker, smtp_sink):
    [message] = accepted(alice.customer)
    smtp_sink.wait_for(1)
    assert wait_until(lambda: statuses() == [Status.SENT])
    Message.objects.filter(pk=message.pk).update(
        status=Status.RETRYING, release_at=timezone.now() + timedelta(seconds=60)
    )
    assert routing.release_due() == 0
    Message.objects.filter(pk=message.pk).update(release_at=timezone.now())
    assert routing.release_due() == 1
    assert len(smtp_sink.wait_for(2)) == 2
    assert wait_until(lambda: statuses() == [Status.SENT])


def test_a_scheduled_send_waits_in_postgres_until_due(alice, worker, smtp_sink):
    send_at = timezone.now() + timedelta(seconds=1.5)
    [message] = accepted(alice.customer, send_at=send_at)
    assert message.status == Status.DEFERRED
    assert routing.release_due() == 0
    assert not wait_until(lambda: smtp_sink.received, timeout=0.5)
    assert wait_until(lambda: routing.release_due() == 1, timeout=5)
    smtp_sink.wait_for(1)
    assert wait_until(lambda: statuses() == [Status.SENT])
    assert Message.objects.get().sent_at >= send_at


def test_a_message_left_sending_by_a_dead_worker_is_reclaimed_after_its_lease(
    alice, worker, smtp_sink, settings
):
    [message] = accepted(alice.customer)
    smtp_sink.wait_for(1)
    assert wait_until(lambda: statuses() == [Status.SENT])
    # As if a worker claimed it and died before sending.
    Message.objects.filter(pk=message.pk).update(
        status=Status.SENDING, sending_at=timezone.now() - timedelta(seconds=30)
    )
    settings.MAILQ_SENDING_LEASE_SECONDS = 60
    assert sweeper.reclaim_expired_leases() == 0
    settings.MAILQ_SENDING_LEASE_SECONDS = 10
    assert sweeper.reclaim_expired_leases() == 1
    smtp_sink.wait_for(2)
    assert wait_until(lambda: statuses() == [Status.SENT])


def test_the_sweep_task_runs_on_the_maintenance_worker(alice, start_worker, smtp_sink, settings):
    start_worker(MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS="0")
    [message] = accepted(alice.customer)  # committed and published (transactional test)
    smtp_sink.wait_for(1)
    assert wait_until(lambda: statuses() == [Status.SENT])
    # As if the publish had been lost: queued, never confirmed by the broker.
    Message.objects.filter(pk=message.pk).update(status=Status.QUEUED, published_at=None)
    # Beat publishes exactly this; the worker's own sweep republishes and sends it.
    app.send_task("delivery.tasks.sweep", queue=settings.MAILQ_MAINTENANCE_QUEUE)
    assert len(smtp_sink.wait_for(2)) == 2
    assert wait_until(lambda: statuses() == [Status.SENT])


def test_a_batch_whose_publish_broke_after_the_commit_is_recovered_by_the_sweeper(
    alice, worker, smtp_sink, monkeypatch, settings
):
    def broker_away(*args, **kwargs):
        raise OperationalError("connection refused (injected)")

    items = [
        {"template": "welcome", "to": "ana@example.com", "data": {"name": f"N{i}"}}
        for i in range(100)
    ]
    with monkeypatch.context() as patch:
        patch.setattr(app, "send_task", broker_away)
        response = alice.client.post("/v1/messages/batch", {"messages": items}, format="json")
    assert response.status_code == 202 and response.json()["accepted"] == 100
    messages = list(Message.objects.all())
    assert {(m.status, m.published_at) for m in messages} == {(Status.QUEUED, None)}
    assert not wait_until(lambda: smtp_sink.received, timeout=0.5)

    settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS = 0
    assert sweeper.republish_unpublished() == 100
    smtp_sink.wait_for(100)
    assert wait_until(lambda: statuses().count(Status.SENT) == 100)
    line = smtp_sink.report(messages)
    assert smtp_sink.tally(messages) == (100, 100, 0), line


def test_a_publish_made_but_not_recorded_is_published_twice_and_sent_once(
    alice, start_worker, smtp_sink, settings
):
    """The web process died after the broker confirmed, before it wrote published_at: the
    sweeper publishes again, and the claim lets only one of the two tasks send."""
    messages = accepted(alice.customer, count=60)  # published: the tasks wait in the queue
    Message.objects.update(published_at=None)
    settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS = 0
    assert sweeper.republish_unpublished() == 60  # a second task for every message

    start_worker()
    smtp_sink.wait_for(60)
    assert wait_until(lambda: statuses().count(Status.SENT) == 60)
    assert not wait_until(lambda: len(smtp_sink.received) > 60, timeout=1)
    line = smtp_sink.report(messages)
    assert smtp_sink.tally(messages) == (60, 60, 0), line


def test_a_task_the_broker_lost_after_confirming_it_is_published_again(
    alice, start_worker, smtp_sink, settings
):
    """A queue purged by hand, or a broker disk lost: the row still says `queued`."""
    messages = accepted(alice.customer, count=20)  # published and confirmed, no worker yet
    with app.connection_for_write() as conn:
        for name in {m.queue for m in messages}:
            conn.channel().queue_purge(name)
    start_worker()
    assert not wait_until(lambda: smtp_sink.received, timeout=0.5)

    assert sweeper.republish_stale() == 0  # not yet stale: it may still be on its way
    assert sweeper.republish_unpublished() == 0
    settings.MAILQ_SWEEP_STALE_QUEUED_AFTER_SECONDS = 0
    settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS = 0
    # The first MAILQ_EXPRESS_INFLIGHT went to the express lane, whose publishes accepting does
    # not mark (routing.publish): the unpublished step takes those, the stale step the rest.
    express = sum(is_express(m.queue) for m in messages)
    assert express == settings.MAILQ_EXPRESS_INFLIGHT
    assert sweeper.republish_stale() == 20 - express
    assert sweeper.republish_unpublished() == express
    smtp_sink.wait_for(20)
    assert wait_until(lambda: statuses().count(Status.SENT) == 20)
    line = smtp_sink.report(messages)
    assert smtp_sink.tally(messages) == (20, 20, 0), line
