"""/metrics: who may read it, and the events it counts (requests, refusals, deliveries)."""

import pytest

from delivery import routing, sending
from mailq.celery import app
from tests.customers.helpers import limit, send
from tests.delivery.scrape import scrape, total
from tests.factories import accepted, queue

LATENCY_COUNT = "mailq_accept_to_sent_seconds_count"


# --- access ----------------------------------------------------------------------------------


def test_without_a_token_only_loopback_clients_may_read_metrics(client, db):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "MAILQ_METRICS_TOKEN" in response.json()["error"]["message"]


def test_behind_a_proxy_the_configured_client_address_decides(client, db, settings):
    settings.MAILQ_CLIENT_IP_META = "HTTP_X_REAL_IP"
    # The proxy connects from loopback; the client it speaks for does not.
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_REAL_IP="203.0.113.9")
    assert response.status_code == 403


def test_with_a_token_every_client_must_send_it(client, db, settings):
    settings.MAILQ_METRICS_TOKEN = "s3cret-metrics"
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_token"
    assert missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_token"
    right = client.get(
        "/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-metrics"
    )
    assert right.status_code == 200
    assert b"mailq_state_source_up" in right.content


def test_metrics_answer_other_methods_with_405_in_the_error_shape(client, db):
    response = client.post("/metrics")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


# --- API requests and refusals ----------------------------------------------------------------


def test_api_requests_are_counted_by_url_pattern_method_and_status(client, alice):
    before = scrape(client)
    created = send(alice.client)
    assert created.status_code == 202
    assert alice.client.get(f"/v1/messages/{created.json()['id']}").status_code == 200
    too_big = alice.client.post(
        "/v1/messages", {"data": "x" * 300_000}, format="json"
    )  # refused by the body limit, before URL resolution
    assert too_big.status_code == 413
    after = scrape(client)

    def grew(endpoint: str, method: str, status: str) -> float:
        labels = {"endpoint": endpoint, "method": method, "status": status}
        name = "mailq_http_requests_total"
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("/v1/messages", "POST", "202") == 1
    assert grew("/v1/messages/<uuid:message_id>", "GET", "200") == 1
    assert grew("/v1/messages", "POST", "413") == 1
    name = "mailq_http_request_duration_seconds_count"
    assert (
        total(after, name, endpoint="/v1/messages") - total(before, name, endpoint="/v1/messages")
        == 2
    )


def test_throttled_and_over_quota_refusals_are_counted_by_tier(client, alice, bob):
    limit(alice, api_burst=1, api_rate_per_second=1)
    limit(bob, daily_quota=1)
    before = scrape(client)
    assert send(alice.client).status_code == 202
    assert send(alice.client).json()["error"]["code"] == "rate_limited"
    assert send(bob.client).status_code == 202
    assert send(bob.client).json()["error"]["code"] == "quota_exceeded"
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("mailq_api_throttled_total", tier="standard", reason="rate_limit") == 1
    assert grew("mailq_api_over_quota_total", tier="standard", period="day") == 1
    assert grew("mailq_http_requests_total", endpoint="/v1/messages", status="429") == 2


def test_a_locked_out_client_ip_is_counted_as_throttled(client, anon, db, settings):
    settings.MAILQ_AUTH_FAILURE_RATE = "2/m"
    before = scrape(client)
    codes = [
        anon.post(
            "/v1/messages", {}, format="json", HTTP_AUTHORIZATION="Bearer mq_wrong"
        ).status_code
        for _ in range(4)
    ]
    assert 429 in codes
    after = scrape(client)
    name, labels = "mailq_api_throttled_total", {"reason": "ip_lockout", "tier": "none"}
    assert total(after, name, **labels) - total(before, name, **labels) == codes.count(429)


# --- deliveries (in this process; tests/delivery/test_metrics_processes.py runs real ones) -----


def test_sending_n_messages_grows_the_latency_histogram_by_n_per_tier(
    client, alice, charlie, providers
):
    before = scrape(client)
    messages = accepted(alice.customer, 3) + accepted(charlie.customer, 2)
    report = sending.deliver([str(m.id) for m in messages])
    assert report.counts == {"sent": 5}
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew(LATENCY_COUNT, tier="standard") == 3
    assert grew(LATENCY_COUNT, tier="premium") == 2
    assert grew(LATENCY_COUNT, tier="free") == 0
    assert grew("mailq_deliveries_total", tier="standard", outcome="sent") == 3
    # Quiet customers' first messages take the express lane.
    assert grew(LATENCY_COUNT, tier="standard", lane="express") == 3
    provider = providers.url
    assert grew("mailq_provider_attempts_total", provider=provider) == 5
    assert grew("mailq_provider_attempt_seconds_count", provider=provider) == 5
    assert grew("mailq_provider_errors_total", provider=provider) == 0
    # Every observed latency is in some bucket at or below +Inf.
    assert grew("mailq_accept_to_sent_seconds_bucket", tier="premium", le="+Inf") == 2


def test_provider_errors_are_counted_by_kind(client, alice, providers):
    providers.refusals["busy@example.com"] = ["451 4.3.0 try later"]
    providers.refusals["gone@example.com"] = ["550 5.1.1 no such user"]
    before = scrape(client)
    busy = accepted(alice.customer, 1, to="busy@example.com")
    gone = accepted(alice.customer, 1, to="gone@example.com")
    report = sending.deliver([str(m.id) for m in busy + gone])
    assert report.counts == {"retrying": 1, "failed": 1}
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    provider = providers.url
    assert grew("mailq_provider_errors_total", provider=provider, kind="temporary") == 1
    assert grew("mailq_provider_errors_total", provider=provider, kind="permanent") == 1
    assert grew("mailq_deliveries_total", tier="standard", outcome="retrying") == 1
    assert grew("mailq_deliveries_total", tier="standard", outcome="failed") == 1
    assert grew(LATENCY_COUNT) == 0


# --- what Flower shows -----------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
def test_published_tasks_show_their_message_ids_and_customer(alice, broker, count):
    messages = accepted(alice.customer, count)
    name = queue("standard")
    routing.publish([(str(m.id), name, m.customer_id) for m in messages])
    with app.connection_for_read() as conn:
        message = conn.default_channel.basic_get(name, no_ack=True)
    headers = message.headers
    assert headers["kwargsrepr"] == repr({"customer": alice.customer.pk})
    for m in messages:
        assert str(m.id) in headers["argsrepr"]
    task = routing.DELIVER_TASK if count == 1 else routing.DELIVER_BATCH_TASK
    assert headers["task"] == task
