"""Rate limits: the GCRA bucket per customer (exact at its boundaries), batches, headers, tier
changes, and failing open when Redis is down. Real Redis (MAILQ_TEST_REDIS_URL) throughout.

Boundary tests call `throttling.take` with an explicit `now`, so they are exact to the
microsecond; the HTTP tests use customer overrides slow enough (1 message/s) that the time a
test takes cannot refill the bucket by a whole message.
"""

import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from customers import counters, throttling
from customers.models import Customer
from customers.seed import DEFAULT_TIERS
from tests.customers.helpers import batch, limit, send, used
from tests.delivery.test_api_errors import assert_error
from tests.factories import CustomerFactory, tier

T0 = datetime(2030, 1, 15, 12, 0, 0, tzinfo=UTC)
IP = "192.0.2.1"


def customer_on(tier_name: str) -> Customer:
    return CustomerFactory(tier=tier(tier_name))


def at(seconds: float = 0, microseconds: int = 0) -> datetime:
    return T0 + timedelta(seconds=seconds, microseconds=microseconds)


@pytest.mark.parametrize("tier_name", ["free", "standard", "premium"])
def test_a_full_bucket_admits_exactly_the_tiers_burst_at_once(db, tier_name):
    customer = customer_on(tier_name)
    burst = DEFAULT_TIERS[tier_name]["api_burst"]

    first = throttling.take(customer, burst, 0, IP, now=at())
    assert first.outcome == throttling.OK
    assert first.remaining == 0
    refused = throttling.take(customer, 1, 0, IP, now=at())
    assert refused.outcome == throttling.RATE
    assert refused.refusal().code == "rate_limited"


@pytest.mark.parametrize("tier_name", ["free", "standard", "premium"])
def test_an_empty_bucket_refills_one_message_per_interval_of_the_tiers_rate(db, tier_name):
    customer = customer_on(tier_name)
    burst = DEFAULT_TIERS[tier_name]["api_burst"]
    rate = DEFAULT_TIERS[tier_name]["api_rate_per_second"]
    interval_us = 1_000_000 // rate  # 200 ms, 10 ms, 500 us: all exact
    assert throttling.take(customer, burst, 0, IP, now=at()).outcome == throttling.OK

    just_before = throttling.take(customer, 1, 0, IP, now=at(microseconds=interval_us - 1))
    assert just_before.outcome == throttling.RATE
    assert just_before.retry_us == 1
    assert throttling.take(customer, 1, 0, IP, now=at(microseconds=interval_us)).outcome == 0

    # Sustained: one second later exactly `rate` more messages fit, and not one more.
    one_second = at(seconds=1, microseconds=interval_us)
    assert throttling.take(customer, rate, 0, IP, now=one_second).outcome == throttling.OK
    assert throttling.take(customer, 1, 0, IP, now=one_second).outcome == throttling.RATE


def test_a_refused_request_takes_nothing_from_the_bucket(db):
    customer = customer_on("free")  # 5/s, burst 50
    assert throttling.take(customer, 45, 0, IP, now=at()).outcome == throttling.OK
    assert throttling.take(customer, 6, 0, IP, now=at()).outcome == throttling.RATE
    assert throttling.take(customer, 5, 0, IP, now=at()).outcome == throttling.OK


def test_a_rate_change_keeps_the_debt_in_messages_instead_of_resetting_it(db):
    customer = customer_on("free")  # 5/s, burst 50
    assert throttling.take(customer, 50, 0, IP, now=at()).outcome == throttling.OK

    # A faster rate: the 50 messages owed are repaid at 10/s, so one more fits after 100 ms.
    Customer.objects.filter(pk=customer.pk).update(api_rate_per_second=10)
    customer.refresh_from_db()
    refused = throttling.take(customer, 1, 0, IP, now=at())
    assert refused.outcome == throttling.RATE
    assert refused.retry_us == 100_000
    assert throttling.take(customer, 1, 0, IP, now=at(microseconds=100_000)).outcome == 0


def test_a_batch_costs_as_many_units_as_it_holds_messages(alice):
    limit(alice, api_rate_per_second=1, api_burst=500)

    response = batch(alice.client, 500)
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 500
    assert '"burst";r=0;' in response["RateLimit"]

    # Five more need five seconds of refill, however long the batch itself took.
    refused = batch(alice.client, 5)
    assert_error(refused, 429, "rate_limited")
    assert refused["Retry-After"] in ("4", "5")


def test_a_batch_larger_than_the_burst_is_refused_as_a_client_error(alice):
    limit(alice, api_burst=10)

    response = batch(alice.client, 11)
    error = assert_error(response, 422, "batch_exceeds_burst")
    assert error["fields"] == {"messages": ["At most 10 messages per request on this plan."]}
    assert batch(alice.client, 10).status_code == 202


def test_an_unparsable_batch_costs_one_unit_and_still_answers_400(alice):
    limit(alice, api_rate_per_second=1, api_burst=2)

    bad = alice.client.post("/v1/messages/batch", "{nope", content_type="application/json")
    assert_error(bad, 400, "malformed_json")
    assert '"burst";r=1;' in bad["RateLimit"]
    assert send(alice.client).status_code == 202
    assert_error(send(alice.client), 429, "rate_limited")


def test_rate_limit_headers_come_on_success_and_on_429(alice):
    limit(alice, api_rate_per_second=1, api_burst=2)
    policy = '"burst";q=2;w=2, "day";q=200000;w=86400, "month";q=5000000;w='

    first = send(alice.client)
    assert first.status_code == 202
    assert first["RateLimit-Policy"].startswith(policy)
    assert first["RateLimit"].startswith('"burst";r=1;t=1, "day";r=199999;t=')
    assert "Retry-After" not in first

    listed = alice.client.get("/v1/messages")  # a read costs one unit too
    assert listed.status_code == 200
    assert listed["RateLimit"].startswith('"burst";r=0;t=2, "day";r=199999;')

    refused = send(alice.client)
    assert_error(refused, 429, "rate_limited")
    assert refused["Retry-After"] == "1"
    assert refused["RateLimit-Policy"].startswith(policy)
    assert refused["RateLimit"].startswith('"burst";r=0;t=2')


def test_every_authenticated_endpoint_is_throttled(alice):
    limit(alice, api_rate_per_second=1, api_burst=1)
    assert alice.client.get("/v1/templates").status_code == 200
    for method, path in [("get", "/v1/templates"), ("get", "/v1/usage"), ("get", "/v1/messages")]:
        assert_error(getattr(alice.client, method)(path), 429, "rate_limited")


def test_customers_have_separate_buckets(alice, bob):
    limit(alice, api_rate_per_second=1, api_burst=1)
    assert send(alice.client).status_code == 202
    assert_error(send(alice.client), 429, "rate_limited")
    assert send(bob.client).status_code == 202


def test_a_tier_change_takes_effect_on_the_next_request(alice):
    Customer.objects.filter(pk=alice.customer.pk).update(tier=tier("free"))
    assert batch(alice.client, 50).status_code == 202
    assert_error(send(alice.client), 429, "rate_limited")

    Customer.objects.filter(pk=alice.customer.pk).update(tier=tier("premium"))
    response = send(alice.client)
    assert response.status_code == 202
    assert response["RateLimit-Policy"].startswith('"burst";q=200000;w=100, "day";q=20000000;')


def test_throttling_off_refuses_nothing_and_sends_no_headers(alice, settings):
    settings.MAILQ_THROTTLING = False
    limit(alice, api_rate_per_second=1, api_burst=1)
    for _ in range(3):
        response = send(alice.client)
        assert response.status_code == 202
        assert "RateLimit" not in response
    assert used(alice) == (3, 3)  # usage is still counted


def test_with_redis_down_the_api_fails_open_as_documented(alice, settings):
    """The cache points at a closed local port: sends succeed, without RateLimit headers,
    no IP is locked out, and usage is still counted exactly in PostgreSQL."""
    from tests.conftest import free_port

    limit(alice, api_rate_per_second=1, api_burst=1)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.25},
        }
    }
    for _ in range(3):
        response = send(alice.client)
        assert response.status_code == 202, response.content
        assert "RateLimit" not in response
    # The breaker is open: this process leaves Redis alone for a while.
    assert counters.link().down_until > time.monotonic()

    alice.client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.key}x")
    for _ in range(12):
        assert_error(send(alice.client), 401, "invalid_api_key")
    assert used(alice) == (3, 3)


def test_redis_is_used_again_once_it_is_back(alice, settings):
    """A real Redis server starts on the port that was closed: after the retry interval the
    throttle uses it again."""
    from tests.conftest import free_port, wait_until

    limit(alice, api_rate_per_second=1, api_burst=1)
    port = free_port()
    settings.MAILQ_THROTTLE_RETRY_SECONDS = 0.2
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{port}/0",
        }
    }
    assert "RateLimit" not in send(alice.client)
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _answers(port), timeout=10)
        time.sleep(0.25)  # the retry interval
        assert send(alice.client)["RateLimit"].startswith('"burst";r=0;')
        assert_error(send(alice.client), 429, "rate_limited")
    finally:
        server.terminate()
        server.wait(10)


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_connect_timeout=0.2).ping()
    except redis.RedisError:
        return False


def test_a_script_redis_no_longer_knows_is_loaded_again(alice):
    """After a Redis restart (or SCRIPT FLUSH) EVALSHA answers NOSCRIPT: load and retry."""
    limit(alice, api_rate_per_second=1)
    assert send(alice.client)["RateLimit"].startswith('"burst";r=1999;')
    counters.link().shas[throttling._TAKE] = "0" * 40  # a SHA Redis has never seen
    assert send(alice.client)["RateLimit"].startswith('"burst";r=1998;')
    assert counters.link().shas[throttling._TAKE] != "0" * 40
