"""The sweeper repairs what a crash or a lost publish left behind; a real worker then sends."""

from datetime import timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from delivery import routing, sweeper
from delivery.models import Message, Status
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
