"""Message endpoints, happy paths: send, read, list, cancel, idempotency.

No worker runs here: a queued message's publish is an on_commit callback, which these tests
capture (and do not run) to check that exactly the released messages are handed to the broker.
"""

import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from delivery.api.serializers import AcceptedSerializer
from delivery.api.views import _accepted
from delivery.models import DeliveryAttempt, Message, Status
from tests.factories import accepted, queue, template

WELCOME = {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana"}}


def send(client, body=None, **extra):
    return client.post("/v1/messages", body or WELCOME, format="json", **extra)


def send_ok(client, body=None, **extra) -> str:
    response = send(client, body, **extra)
    assert response.status_code == 202, response.content
    return response.json()["id"]


def listed_ids(client, **params) -> list[str]:
    response = client.get("/v1/messages", params)
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def age(message_id: str, **delta) -> None:
    """Move a message's acceptance into the past."""
    Message.objects.filter(pk=message_id).update(accepted_at=timezone.now() - timedelta(**delta))


# --- send --------------------------------------------------------------------------------------


def test_it_accepts_a_send_with_202_and_stores_a_queued_message(
    alice, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = send(alice.client)

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "status", "accepted_at", "send_at"}
    assert body["status"] == "queued"
    assert body["send_at"] is None

    message = Message.objects.get(pk=uuid.UUID(body["id"]))
    assert message.customer == alice.customer
    assert message.status == Status.QUEUED
    assert message.to == ["ana@example.com"]
    assert message.data == {"name": "Ana"}
    assert message.template_version.template.slug == "welcome"
    assert message.template_version.template.customer == alice.customer
    assert message.template_version.number == 1
    assert message.queue == alice.customer.tier.queue + ".express"  # a quiet customer
    assert message.accepted_at <= message.queued_at
    assert parse_datetime(body["accepted_at"]) == message.accepted_at
    assert message.published_at is None  # published only after the commit
    assert len(callbacks) == 1  # the publish, deferred until the row is committed


def test_it_routes_a_message_to_its_customers_tier_express_lane(alice, charlie):
    alice_id = send_ok(alice.client)
    charlie_id = send_ok(charlie.client)

    assert Message.objects.get(pk=alice_id).queue == queue("standard", express=True)
    assert Message.objects.get(pk=charlie_id).queue == queue("premium", express=True)


def test_it_stores_every_recipient_in_order_and_trims_them(alice):
    to = ["ana@example.com", " bob@example.com ", "cat@example.org"]

    message_id = send_ok(alice.client, {**WELCOME, "to": to})

    assert Message.objects.get(pk=message_id).to == [
        "ana@example.com",
        "bob@example.com",
        "cat@example.org",
    ]


def test_it_defers_a_message_with_a_future_send_at_and_does_not_publish_it(
    alice, django_capture_on_commit_callbacks
):
    send_at = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)

    with django_capture_on_commit_callbacks() as callbacks:
        response = send(alice.client, {**WELCOME, "send_at": send_at.isoformat()})

    assert response.status_code == 202
    assert response.json()["status"] == "deferred"
    assert parse_datetime(response.json()["send_at"]) == send_at
    message = Message.objects.get(pk=response.json()["id"])
    assert message.status == Status.DEFERRED
    assert message.send_at == message.release_at == send_at
    assert message.queued_at is None
    assert callbacks == []


def test_it_queues_at_once_a_message_whose_send_at_has_passed(alice):
    send_at = timezone.now() - timedelta(minutes=5)

    response = send(alice.client, {**WELCOME, "send_at": send_at.isoformat()})

    assert response.json()["status"] == "queued"
    assert Message.objects.get(pk=response.json()["id"]).status == Status.QUEUED


def test_it_reads_a_send_at_in_another_timezone_as_that_instant(alice):
    response = send(alice.client, {**WELCOME, "send_at": "2099-01-01T09:00:00+09:00"})

    message = Message.objects.get(pk=response.json()["id"])
    assert message.send_at.isoformat() == "2099-01-01T00:00:00+00:00"


def test_it_sends_from_the_service_default_when_the_customer_has_none(alice):
    assert alice.customer.default_from == ""

    message_id = send_ok(alice.client)

    assert Message.objects.get(pk=message_id).from_email == settings.MAILQ_DEFAULT_FROM


def test_it_sends_from_the_customers_default_from(alice):
    alice.customer.default_from = "Alice <hello@alice.example>"
    alice.customer.save()

    message_id = send_ok(alice.client)

    assert Message.objects.get(pk=message_id).from_email == "Alice <hello@alice.example>"


def test_it_sends_from_and_replies_to_the_addresses_given(alice):
    alice.customer.default_from = "hello@alice.example"
    alice.customer.save()
    body = {**WELCOME, "from": "billing@alice.example", "reply_to": "help@alice.example"}

    message = Message.objects.get(pk=send_ok(alice.client, body))

    assert message.from_email == "billing@alice.example"
    assert message.reply_to == "help@alice.example"


def test_it_accepts_a_display_name_in_from_and_reply_to(alice):
    body = {
        **WELCOME,
        "from": "Alice Billing <billing@alice.example>",
        "reply_to": '"Help, Alice" <help@alice.example>',
    }

    message = Message.objects.get(pk=send_ok(alice.client, body))

    assert message.from_email == "Alice Billing <billing@alice.example>"
    assert message.reply_to == '"Help, Alice" <help@alice.example>'


def test_it_refuses_two_addresses_in_from(alice):
    body = {**WELCOME, "from": "a@alice.example, b@alice.example"}

    response = alice.client.post("/v1/messages", body, format="json")

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"from": ["Enter a valid email address."]}


def test_it_accepts_a_template_without_variables_with_no_data(alice):
    template(alice.customer, slug="ping", subject="Ping", html="", text="pong")

    message_id = send_ok(alice.client, {"template": "ping", "to": "ana@example.com"})

    assert Message.objects.get(pk=message_id).data == {}


# --- read one ----------------------------------------------------------------------------------


def test_it_shows_a_new_message_with_its_status_and_timestamps(alice):
    message_id = send_ok(alice.client, {**WELCOME, "reply_to": "help@alice.example"})

    response = alice.client.get(f"/v1/messages/{message_id}")

    assert response.status_code == 200
    body = response.json()
    message = Message.objects.get(pk=message_id)
    assert body["id"] == message_id
    assert body["status"] == "queued"
    assert body["template"] == "welcome"
    assert body["template_version"] == 1
    assert body["to"] == ["ana@example.com"]
    assert body["from"] == settings.MAILQ_DEFAULT_FROM
    assert body["reply_to"] == "help@alice.example"
    assert parse_datetime(body["accepted_at"]) == message.accepted_at
    assert parse_datetime(body["queued_at"]) == message.queued_at
    assert body["sending_at"] is None
    assert body["sent_at"] is None
    assert body["attempts"] == 0
    assert body["delivery_attempts"] == []
    assert "data" not in body  # personal data is not echoed back


def test_it_shows_a_sent_message_with_its_attempts_and_provider(alice):
    message_id = send_ok(alice.client)
    now = timezone.now()
    Message.objects.filter(pk=message_id).update(
        status=Status.SENT,
        attempts=2,
        sending_at=now,
        sent_at=now + timedelta(seconds=1),
        finished_at=now + timedelta(seconds=1),
        provider="smtp://relay.example",
    )
    DeliveryAttempt.objects.create(
        message_id=message_id,
        provider="smtp://primary.example",
        started_at=now,
        duration_ms=12.5,
        succeeded=False,
        error="451 busy",
    )
    DeliveryAttempt.objects.create(
        message_id=message_id,
        provider="smtp://relay.example",
        started_at=now + timedelta(seconds=1),
        duration_ms=3.0,
        succeeded=True,
    )

    body = alice.client.get(f"/v1/messages/{message_id}").json()

    assert body["status"] == "sent"
    assert body["attempts"] == 2
    assert body["provider"] == "smtp://relay.example"
    assert parse_datetime(body["sent_at"]) == now + timedelta(seconds=1)
    assert [(a["provider"], a["succeeded"], a["error"]) for a in body["delivery_attempts"]] == [
        ("smtp://primary.example", False, "451 busy"),
        ("smtp://relay.example", True, ""),
    ]


# --- list --------------------------------------------------------------------------------------


def test_it_lists_only_the_customers_own_messages_newest_first(alice, bob, charlie):
    first = send_ok(alice.client)
    age(first, minutes=1)
    second = send_ok(alice.client)
    bobs = send_ok(bob.client)

    assert listed_ids(alice.client) == [second, first]
    assert listed_ids(bob.client) == [bobs]
    assert listed_ids(charlie.client) == []


def test_it_filters_the_list_by_status(alice):
    queued = send_ok(alice.client)
    cancelled = send_ok(alice.client)
    assert alice.client.delete(f"/v1/messages/{cancelled}").status_code == 200

    assert listed_ids(alice.client, status="cancelled") == [cancelled]
    assert listed_ids(alice.client, status="queued") == [queued]
    assert listed_ids(alice.client, status="sent") == []


def test_it_filters_the_list_to_messages_accepted_since_a_time(alice):
    old = send_ok(alice.client)
    age(old, hours=2)
    recent = send_ok(alice.client)
    age(recent, minutes=30)
    new = send_ok(alice.client)

    since = (timezone.now() - timedelta(hours=1)).isoformat()

    assert listed_ids(alice.client, since=since) == [new, recent]
    assert listed_ids(alice.client, since=timezone.now().isoformat()) == []


def test_it_paginates_the_list_with_a_cursor_until_every_message_is_seen(alice):
    ids = []
    for minutes in range(5, 0, -1):
        ids.append(send_ok(alice.client))
        age(ids[-1], minutes=minutes)
    newest_first = list(reversed(ids))

    pages, seen = [], []
    url, params = "/v1/messages", {"limit": 2}
    while url:
        body = alice.client.get(url, params).json()
        pages.append(len(body["results"]))
        seen.extend(item["id"] for item in body["results"])
        url, params = body["next"], None

    assert pages == [2, 2, 1]
    assert seen == newest_first


def test_it_keeps_the_filters_when_following_the_next_link(alice):
    queued = []
    for minutes in range(4, 0, -1):
        queued.append(send_ok(alice.client))
        age(queued[-1], minutes=minutes)
        cancelled = send_ok(alice.client)
        alice.client.delete(f"/v1/messages/{cancelled}")

    first = alice.client.get("/v1/messages", {"status": "queued", "limit": 3}).json()
    second = alice.client.get(first["next"]).json()

    assert second["next"] is None
    seen = [m["id"] for m in first["results"] + second["results"]]
    assert seen == list(reversed(queued))
    assert {m["status"] for m in first["results"] + second["results"]} == {"queued"}


def test_it_does_not_page_another_customers_messages_into_the_list(alice, bob):
    for _ in range(3):
        send_ok(bob.client)
    mine = send_ok(alice.client)

    body = alice.client.get("/v1/messages", {"limit": 1}).json()

    assert [m["id"] for m in body["results"]] == [mine]
    assert body["next"] is None


# --- cancel ------------------------------------------------------------------------------------


def test_it_cancels_a_queued_message(alice):
    message_id = send_ok(alice.client)

    response = alice.client.delete(f"/v1/messages/{message_id}")

    assert response.status_code == 200
    assert response.json()["id"] == message_id
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    message = Message.objects.get(pk=message_id)
    assert message.status == Status.CANCELLED
    assert message.finished_at is not None


@pytest.mark.parametrize("status", [Status.DEFERRED, Status.RETRYING])
def test_it_cancels_a_message_still_waiting_to_be_sent(alice, status):
    message_id = send_ok(alice.client)
    Message.objects.filter(pk=message_id).update(status=status)

    response = alice.client.delete(f"/v1/messages/{message_id}")

    assert response.status_code == 200
    assert Message.objects.get(pk=message_id).status == Status.CANCELLED


def test_it_answers_200_again_when_cancelling_a_cancelled_message(alice):
    message_id = send_ok(alice.client)
    alice.client.delete(f"/v1/messages/{message_id}")

    response = alice.client.delete(f"/v1/messages/{message_id}")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


@pytest.mark.parametrize("status", [Status.SENDING, Status.SENT, Status.FAILED, Status.DEAD])
def test_it_answers_409_not_cancellable_for_a_message_already_sending_or_done(alice, status):
    message_id = send_ok(alice.client)
    Message.objects.filter(pk=message_id).update(status=status)

    response = alice.client.delete(f"/v1/messages/{message_id}")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_cancellable"
    assert status in error["message"]
    assert error["fields"] == {"status": [status]}
    assert Message.objects.get(pk=message_id).status == status


# --- idempotency -------------------------------------------------------------------------------


def test_it_replays_the_same_message_for_the_same_idempotency_key_and_body(
    alice, django_capture_on_commit_callbacks
):
    first = send(alice.client, HTTP_IDEMPOTENCY_KEY="order-42")
    with django_capture_on_commit_callbacks() as callbacks:
        second = send(alice.client, HTTP_IDEMPOTENCY_KEY="order-42")

    assert first.status_code == second.status_code == 202
    assert "Idempotent-Replayed" not in first
    assert second["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert Message.objects.count() == 1
    assert Message.objects.get().idempotency_key == "order-42"
    assert callbacks == []  # nothing is published a second time


def test_it_treats_the_same_json_with_keys_in_another_order_as_the_same_body(alice):
    first = send_ok(alice.client, WELCOME, HTTP_IDEMPOTENCY_KEY="k1")
    reordered = {"data": {"name": "Ana"}, "to": "ana@example.com", "template": "welcome"}

    response = send(alice.client, reordered, HTTP_IDEMPOTENCY_KEY="k1")

    assert response.json()["id"] == first
    assert response["Idempotent-Replayed"] == "true"


def test_it_answers_422_idempotency_key_reused_for_the_same_key_with_another_body(alice):
    first = send_ok(alice.client, HTTP_IDEMPOTENCY_KEY="order-42")

    response = send(
        alice.client, {**WELCOME, "to": "eve@example.com"}, HTTP_IDEMPOTENCY_KEY="order-42"
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert set(error["fields"]) == {"Idempotency-Key"}
    assert list(Message.objects.values_list("id", flat=True)) == [uuid.UUID(first)]
    assert Message.objects.get().to == ["ana@example.com"]


def test_it_keeps_idempotency_keys_per_customer(alice, bob):
    alices = send(alice.client, HTTP_IDEMPOTENCY_KEY="shared-key")
    bobs = send(bob.client, {**WELCOME, "to": "bea@example.com"}, HTTP_IDEMPOTENCY_KEY="shared-key")

    assert alices.status_code == bobs.status_code == 202
    assert "Idempotent-Replayed" not in bobs
    assert alices.json()["id"] != bobs.json()["id"]
    assert Message.objects.get(pk=alices.json()["id"]).customer == alice.customer
    assert Message.objects.get(pk=bobs.json()["id"]).customer == bob.customer
    # And each one still replays its own.
    assert (
        send(
            bob.client, {**WELCOME, "to": "bea@example.com"}, HTTP_IDEMPOTENCY_KEY="shared-key"
        ).json()["id"]
        == bobs.json()["id"]
    )


def test_it_sends_twice_without_an_idempotency_key(alice):
    first = send_ok(alice.client)
    second = send_ok(alice.client)

    assert first != second
    assert Message.objects.count() == 2


def test_it_sends_twice_for_two_different_idempotency_keys(alice):
    first = send_ok(alice.client, HTTP_IDEMPOTENCY_KEY="a")
    second = send_ok(alice.client, HTTP_IDEMPOTENCY_KEY="b")

    assert first != second
    assert Message.objects.count() == 2


def test_the_accepted_answer_is_what_its_documented_serializer_gives(alice):
    """views._accepted builds the 202 body by hand (for speed): it must stay exactly what
    AcceptedSerializer, the schema the API docs publish, would give."""
    [now, later] = accepted(alice.customer, count=2)
    Message.objects.filter(pk=later.pk).update(send_at=timezone.now() + timedelta(hours=1))
    later.refresh_from_db()
    for message in (now, later):
        assert _accepted(message) == dict(AcceptedSerializer(message).data)
    assert _accepted(later)["send_at"] is not None
