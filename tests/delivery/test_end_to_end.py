"""HTTP -> PostgreSQL -> RabbitMQ -> a real worker process -> SMTP, all real."""

import json
import urllib.request

import pytest

from delivery.models import Message, Status
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def post_json(url: str, key: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_a_message_posted_over_http_arrives_once_by_smtp_rendered(
    live_server, alice, worker, smtp_sink
):
    status, body = post_json(
        f"{live_server.url}/v1/messages",
        alice.key,
        {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana <3"}},
    )
    assert status == 202
    assert body["status"] == "queued"

    received = smtp_sink.wait_for(1)
    assert len(received) == 1
    email = received[0]
    assert email["Subject"] == "Hello Ana <3"
    assert email["To"] == "ana@example.com"
    assert email["X-Mailq-Message-Id"] == body["id"]
    assert email.get_body(("plain",)).get_content().strip() == "Hi Ana <3"
    # HTML is autoescaped; the text part is not.
    assert email.get_body(("html",)).get_content().strip() == "<p>Hi Ana &lt;3</p>"

    assert wait_until(lambda: Message.objects.get(pk=body["id"]).status == Status.SENT)
    message = Message.objects.get(pk=body["id"])
    assert message.accepted_at <= message.queued_at <= message.sending_at <= message.sent_at
    # Express lane: the publish is not marked (routing.publish), the claim followed at once.
    assert message.published_at is None
    assert message.attempts == 1
    assert message.delivery_attempts.get().succeeded
    # Nothing more arrives later.
    assert not wait_until(lambda: len(smtp_sink.received) > 1, timeout=1.0)


def test_a_batch_is_delivered_in_full_exactly_once(live_server, alice, worker, smtp_sink):
    items = [
        {"template": "welcome", "to": f"user{i}@example.com", "data": {"name": f"U{i}"}}
        for i in range(120)
    ]
    status, body = post_json(f"{live_server.url}/v1/messages/batch", alice.key, {"messages": items})
    assert status == 202
    assert body["accepted"] == 120
    smtp_sink.wait_for(120)
    assert wait_until(lambda: Message.objects.filter(status=Status.SENT).count() == 120)
    counts = smtp_sink.by_message_id()
    assert len(counts) == 120 and set(counts.values()) == {1}
    assert {r["id"] for r in body["results"]} == set(counts)
