"""Dead letters: a message given up on (`dead` after its attempts, or `failed`) is listed in the
admin with why, and is sent again (redriven) by an operator or by its own customer's API call,
or cancelled for good. A redrive goes back through routing, within the customer's cap."""

import uuid

import pytest
from django.utils import timezone

from customers.models import Customer
from delivery import sweeper
from delivery.models import DeliveryAttempt, Message, Status
from tests.conftest import wait_until
from tests.delivery.test_api_errors import assert_error
from tests.factories import accepted, queue

DEAD_LETTERS = "/admin/delivery/deadletter/"


def give_up(message: Message, status: Status = Status.DEAD, error: str = "SMTP 451: busy") -> None:
    """As the worker leaves a message it gave up on: attempts used, the reason, one attempt row."""
    now = timezone.now()
    Message.objects.filter(pk=message.pk).update(
        status=status, attempts=8, last_error=error, finished_at=now, published_at=now
    )
    DeliveryAttempt.objects.create(
        message=message,
        provider="smtp://127.0.0.1:1025",
        started_at=now,
        duration_ms=1.0,
        succeeded=False,
        error=error,
        permanent=status == Status.FAILED,
    )


def redrive(client, message_id):
    return client.post(f"/v1/messages/{message_id}/redrive")


# --- API --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.DEAD, Status.FAILED])
def test_the_api_redrives_a_dead_letter_with_fresh_attempts_and_keeps_its_history(
    transactional_db, alice, broker, status
):
    [message] = accepted(alice.customer)
    give_up(message, status)

    response = redrive(alice.client, message.pk)

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["id"] == str(message.pk)
    # An idle customer has free slots: routing releases it to its tier queue at once.
    assert body["status"] == "queued"
    assert body["attempts"] == 0 and body["last_error"] == "" and body["finished_at"] is None
    message = Message.objects.get(pk=message.pk)
    assert message.queue == queue("standard")
    assert message.published_at is not None
    assert message.delivery_attempts.count() == 1  # the history stays


def test_a_redriven_message_waits_within_its_customers_cap(transactional_db, alice, broker):
    Customer.objects.filter(pk=alice.customer.pk).update(inflight_cap=2)
    [dead, *busy] = accepted(alice.customer, count=3)  # the other two fill the cap
    give_up(dead)

    response = redrive(alice.client, dead.pk)

    assert response.status_code == 202
    assert response.json()["status"] == "deferred"
    Message.objects.filter(pk__in=[m.pk for m in busy]).update(status=Status.SENT)
    sweeper.sweep()  # the reconciler releases the customer's backlog into its free slots
    assert Message.objects.get(pk=dead.pk).status == Status.QUEUED


def test_in_fifo_mode_a_redriven_message_is_queued_and_published_at_once(
    transactional_db, alice, broker, settings
):
    settings.MAILQ_ROUTING = "fifo"
    Customer.objects.filter(pk=alice.customer.pk).update(inflight_cap=1)
    dead, _ = accepted(alice.customer, count=2)  # fifo has no caps: queued at once anyway
    give_up(dead)

    response = redrive(alice.client, dead.pk)

    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert Message.objects.get(pk=dead.pk).published_at is not None


@pytest.mark.parametrize(
    "status",
    [s for s in Status if s not in (Status.DEAD, Status.FAILED)],
)
def test_it_answers_409_not_redrivable_for_a_message_that_is_not_dead_or_failed(alice, status):
    [message] = accepted(alice.customer)
    Message.objects.filter(pk=message.pk).update(status=status)

    error = assert_error(redrive(alice.client, message.pk), 409, "not_redrivable")

    assert error["fields"] == {"status": [status]}
    assert Message.objects.get(pk=message.pk).status == status


def test_it_answers_404_for_another_customers_dead_letter_and_leaves_it_alone(alice, bob):
    [message] = accepted(alice.customer)
    give_up(message)

    assert_error(redrive(bob.client, message.pk), 404, "not_found")
    assert_error(redrive(alice.client, uuid.uuid4()), 404, "not_found")

    assert Message.objects.get(pk=message.pk).status == Status.DEAD


def test_redrive_needs_an_api_key(anon, alice):
    [message] = accepted(alice.customer)
    assert_error(redrive(anon, message.pk), 401, "missing_api_key")


# --- admin ------------------------------------------------------------------------------------


def test_the_dead_letter_view_lists_only_messages_given_up_on_with_the_reason(admin_client, alice):
    dead, failed, sent = accepted(alice.customer, count=3)
    give_up(dead, error="smtp://127.0.0.1:1025: SMTP 451 4.3.0 mailbox busy")
    give_up(failed, Status.FAILED, error="render: 'name' is undefined")
    Message.objects.filter(pk=sent.pk).update(status=Status.SENT)

    page = admin_client.get(DEAD_LETTERS).content.decode()

    assert str(dead.pk) in page and str(failed.pk) in page and str(sent.pk) not in page
    assert "SMTP 451 4.3.0 mailbox busy" in page and "is undefined" in page
    assert '<td class="field-attempts">8</td>' in page
    assert ">alice<" in page
    assert admin_client.get(f"{DEAD_LETTERS}{dead.pk}/change/").status_code == 200


def test_the_admin_redrives_the_selected_dead_letters(
    admin_client, alice, broker, django_capture_on_commit_callbacks
):
    first, second, left = accepted(alice.customer, count=3)
    for message in (first, second, left):
        give_up(message)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            DEAD_LETTERS,
            {"action": "redrive_selected", "_selected_action": [first.pk, second.pk]},
            follow=True,
        )

    assert "Redriven 2 message(s)." in response.content.decode()
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses == {first.pk: Status.QUEUED, second.pk: Status.QUEUED, left.pk: Status.DEAD}


def test_the_admin_cancels_the_selected_dead_letters(admin_client, alice):
    dead, failed = accepted(alice.customer, count=2)
    give_up(dead)
    give_up(failed, Status.FAILED)

    response = admin_client.post(
        DEAD_LETTERS,
        {"action": "cancel_selected", "_selected_action": [dead.pk, failed.pk]},
        follow=True,
    )

    assert "Cancelled 2 message(s)." in response.content.decode()
    assert set(Message.objects.values_list("status", flat=True)) == {Status.CANCELLED}
    assert str(dead.pk) not in admin_client.get(DEAD_LETTERS).content.decode()


# --- end to end: retries, dead, redrive, sent once --------------------------------------------


@pytest.mark.e2e
def test_a_message_retried_until_dead_is_redriven_and_then_sent_exactly_once(
    alice, start_worker, smtp_sink
):
    start_worker(MAILQ_MAX_ATTEMPTS="3")
    smtp_sink.refusals["ana@example.com"] = ["451 4.3.0 mailbox busy"] * 3
    [message] = accepted(alice.customer)

    # Each temporary failure waits in PostgreSQL (`retrying`, release_at) and the sweeper
    # releases it when due: no broker ETA. The third failure is the last.
    def dead() -> bool:
        sweeper.sweep()
        return Message.objects.get(pk=message.pk).status == Status.DEAD

    assert wait_until(dead, timeout=20, interval=0.2)
    message = Message.objects.get(pk=message.pk)
    assert message.attempts == 3 and "451: 4.3.0 mailbox busy" in message.last_error
    assert message.delivery_attempts.filter(succeeded=False).count() == 3
    assert smtp_sink.received == []

    response = redrive(alice.client, message.pk)
    assert response.status_code == 202, response.content

    smtp_sink.wait_for(1)
    assert wait_until(lambda: Message.objects.get(pk=message.pk).status == Status.SENT)
    assert not wait_until(lambda: len(smtp_sink.received) > 1, timeout=1.0)
    message = Message.objects.get(pk=message.pk)
    assert message.attempts == 1
    assert [a.succeeded for a in message.delivery_attempts.all()] == [False, False, False, True]
    print(f"accepted 1, sent {len(smtp_sink.by_message_id())}, duplicates 0 (after 3 attempts)")


@pytest.mark.e2e
def test_a_poison_message_fails_at_once_is_never_retried_and_spares_the_rest_of_its_batch(
    alice, start_worker, smtp_sink
):
    messages = accepted(alice.customer, count=50)  # published as two batch tasks (5 + 45)
    poison = messages[20]
    # Accepted while valid; then its data no longer fills the template (render fails for good).
    Message.objects.filter(pk=poison.pk).update(data={})
    start_worker()

    assert wait_until(lambda: Message.objects.filter(status=Status.SENT).count() == 49)
    for _ in range(3):  # a retry would be released by a sweep: there is none to release
        sweeper.sweep()
    assert not wait_until(lambda: len(smtp_sink.received) > 49, timeout=1)
    poison = Message.objects.get(pk=poison.pk)
    assert poison.status == Status.FAILED and "name" in poison.last_error
    assert poison.attempts == 1 and poison.release_at is None
    [attempt] = poison.delivery_attempts.all()
    assert attempt.provider == "render" and attempt.permanent
    total, sent, duplicates = smtp_sink.tally(messages)
    line = f"accepted {total}, sent {sent}, failed 1 (the poison), duplicates {duplicates}"
    print(line)
    assert (total, sent, duplicates) == (50, 49, 0), line
    assert str(poison.pk) not in smtp_sink.by_message_id()
