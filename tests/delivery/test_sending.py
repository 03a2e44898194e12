"""The worker side in-process: claim -> render -> SMTP (a real sink) -> record."""

import threading

import pytest

from delivery import sending
from delivery.models import DeliveryAttempt, Message, Status
from tests.factories import accepted, template


def reload(message: Message) -> Message:
    return Message.objects.get(pk=message.pk)


def test_it_sends_a_queued_message_and_records_the_attempt(alice, providers):
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"sent": 1}
    assert len(providers.received) == 1
    message = reload(message)
    assert message.status == Status.SENT
    assert message.provider == providers.url
    assert message.sent_at is not None and message.finished_at == message.sent_at
    attempt = DeliveryAttempt.objects.get(message=message)
    assert attempt.succeeded and attempt.provider == providers.url and attempt.duration_ms > 0


def test_the_ledger_lets_a_second_delivery_of_the_same_id_send_nothing(alice, providers):
    [message] = accepted(alice.customer)
    sending.deliver([str(message.id)])
    assert sending.deliver([str(message.id)]).counts == {}
    assert len(providers.received) == 1
    assert reload(message).attempts == 1


def test_a_temporary_smtp_refusal_is_retried_with_backoff_then_sent(alice, providers):
    providers.refusals["ana@example.com"] = ["451 4.3.0 try again later"]
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"retrying": 1}
    message = reload(message)
    assert message.status == Status.RETRYING
    assert message.release_at > message.sending_at
    assert "451" in message.last_error
    assert providers.received == []

    # The sweeper releases it when due; here we release by hand and deliver again.
    Message.objects.filter(pk=message.pk).update(status=Status.QUEUED)
    assert sending.deliver([str(message.id)]).counts == {"sent": 1}
    message = reload(message)
    assert message.status == Status.SENT and message.attempts == 2
    assert [a.succeeded for a in message.delivery_attempts.order_by("started_at")] == [False, True]


def test_a_permanent_smtp_refusal_fails_the_message_without_retry(alice, providers):
    providers.refusals["ana@example.com"] = ["550 5.1.1 no such user"]
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"failed": 1}
    message = reload(message)
    assert message.status == Status.FAILED
    assert message.release_at is None and message.finished_at is not None
    assert "550" in message.last_error
    assert message.delivery_attempts.get().permanent


def test_it_gives_up_as_dead_after_the_maximum_attempts(alice, providers, settings):
    settings.MAILQ_MAX_ATTEMPTS = 2
    providers.refusals["ana@example.com"] = ["451 4.3.0 busy"] * 5
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"retrying": 1}
    Message.objects.filter(pk=message.pk).update(status=Status.QUEUED)
    assert sending.deliver([str(message.id)]).counts == {"dead": 1}
    message = reload(message)
    assert message.status == Status.DEAD and message.attempts == 2


def test_an_unreachable_provider_fails_over_to_the_next(alice, providers, settings):
    from tests.conftest import free_port

    settings.MAILQ_PROVIDERS = [f"smtp://127.0.0.1:{free_port()}", providers.url]
    sending.close_providers()
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"sent": 1}
    message = reload(message)
    assert message.provider == providers.url
    first, second = message.delivery_attempts.order_by("started_at")
    assert not first.succeeded and not first.permanent and second.succeeded


def test_a_template_that_cannot_render_fails_at_once_and_spares_the_rest(alice, providers):
    good = accepted(alice.customer, count=2)
    # Accepted while valid; the data is then broken behind intake's back (a poison message).
    bad = accepted(alice.customer)[0]
    Message.objects.filter(pk=bad.pk).update(data={})
    ids = [str(m.id) for m in [*good, bad]]
    assert sending.deliver(ids).counts == {"sent": 2, "failed": 1}
    bad = reload(bad)
    assert bad.status == Status.FAILED and "name" in bad.last_error
    assert bad.delivery_attempts.get().provider == "render"
    assert len(providers.received) == 2


def test_a_batch_task_sends_every_message_over_one_connection(alice, providers):
    messages = accepted(alice.customer, count=30)
    assert sending.deliver([str(m.id) for m in messages]).counts == {"sent": 30}
    assert len(providers.received) == 30
    assert Message.objects.filter(status=Status.SENT).count() == 30


def test_a_cancelled_message_is_not_sent(alice, providers):
    [message] = accepted(alice.customer)
    Message.objects.filter(pk=message.pk).update(status=Status.CANCELLED)
    assert sending.deliver([str(message.id)]).counts == {}
    assert providers.received == []


def test_the_message_renders_from_the_version_it_was_accepted_with(alice, providers):
    [message] = accepted(alice.customer)
    tpl = alice.customer.templates.get(slug="welcome")
    tpl.add_version("Changed {{ name }}", "<p>changed</p>", "changed")
    sending.deliver([str(message.id)])
    assert providers.received[0]["Subject"] == "Hello N0"


@pytest.mark.parametrize("reply", ["421 4.7.0 too many connections", "452 4.5.3 too many"])
def test_throttling_replies_are_temporary(alice, providers, reply):
    providers.refusals["ana@example.com"] = [reply]
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"retrying": 1}


def test_a_second_template_of_another_customer_is_not_confused(alice, bob, providers):
    template(bob.customer, slug="other", subject="Bob {{ name }}")
    [message] = accepted(bob.customer, template_slug="other")
    sending.deliver([str(message.id)])
    assert providers.received[0]["Subject"] == "Bob N0"


def test_a_dead_provider_costs_one_attempt_per_task_not_one_per_message(alice, providers, settings):
    from tests.conftest import free_port

    dead = f"smtp://127.0.0.1:{free_port()}"
    settings.MAILQ_PROVIDERS = [dead, providers.url]
    sending.close_providers()
    messages = accepted(alice.customer, count=5)
    assert sending.deliver([str(m.id) for m in messages]).counts == {"sent": 5}
    assert DeliveryAttempt.objects.filter(provider=dead).count() == 1
    assert DeliveryAttempt.objects.filter(provider=providers.url, succeeded=True).count() == 5


def test_an_outcome_is_not_recorded_over_a_newer_claim(alice, providers):
    """A worker whose lease expired must not overwrite the claim that replaced it."""
    from django.utils import timezone

    [message] = accepted(alice.customer)
    [claimed] = Message.objects.claim([str(message.id)])
    # The lease expired and the sweeper requeued it; another worker claimed it again.
    Message.objects.filter(pk=message.pk).update(status=Status.QUEUED)
    Message.objects.claim([str(message.id)])
    stale = sending.Outcome(claimed, Status.FAILED, timezone.now(), error="stale")
    sending._record([stale])
    assert reload(message).status == Status.SENDING


def test_each_thread_keeps_its_own_provider_connections(settings, smtp_sink):
    settings.MAILQ_PROVIDERS = [smtp_sink.url]
    sending.close_providers()
    theirs: list = []
    thread = threading.Thread(target=lambda: theirs.append(sending.provider_chain()))
    thread.start()
    thread.join()
    mine = sending.provider_chain()
    assert sending.provider_chain() is mine  # reused within a thread
    assert theirs[0] is not mine and theirs[0][0] is not mine[0]  # never shared across threads
    sending.close_providers()
    assert sending.provider_chain() is not mine  # rebuilt after a close
    sending.close_providers()


def test_a_stopping_worker_records_its_sends_and_hands_back_the_rest_of_its_batch(
    alice, providers
):
    messages = accepted(alice.customer, count=5)
    ids = [str(m.id) for m in messages]

    report = sending.deliver(ids, stopping=lambda: len(providers.received) >= 2)

    assert report.counts == {"sent": 2}
    queued = Message.objects.filter(status=Status.QUEUED)
    assert sorted(report.handed_back) == sorted((str(m.id), m.queue, m.customer_id) for m in queued)
    assert Message.objects.filter(status=Status.SENT).count() == 2 and queued.count() == 3
    # Not attempted: the claim is undone, and the sweeper would republish it if need be.
    assert {(m.attempts, m.published_at) for m in queued} == {(0, None)}
    assert sending.deliver(ids).counts == {"sent": 3}
