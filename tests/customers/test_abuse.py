"""Abuse protection: the failed-authentication lockout per client IP, and customers flagged,
then suspended automatically, and reinstated by an operator."""

import time

import pytest

from customers.models import Customer
from tests.customers.helpers import limit, send
from tests.delivery.test_api_errors import assert_error

INVALID = {"template": "welcome", "to": "not-an-address"}  # 422


@pytest.fixture
def lockout(settings):
    # Per hour, so a window edge cannot fall inside the test (the fixed-window caveat).
    settings.MAILQ_AUTH_FAILURE_RATE = "10/h"
    settings.MAILQ_AUTH_LOCKOUT_SECONDS = 300


def with_key(client, key: str):
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def test_an_ip_is_locked_out_after_too_many_failed_authentications(alice, anon, lockout):
    guesser = with_key(anon, alice.key[:-1] + "x")
    for _ in range(10):
        assert_error(send(guesser), 401, "invalid_api_key")

    refused = send(guesser)
    assert_error(refused, 429, "rate_limited")
    assert refused["Retry-After"] == "300"
    # During the cool-down even the right key from that address is refused: a guess that
    # happens to be right is indistinguishable from a wrong one.
    assert_error(send(alice.client), 429, "rate_limited")
    # Other addresses are not affected.
    assert send(alice.client, REMOTE_ADDR="198.51.100.7").status_code == 202
    assert_error(send(guesser, REMOTE_ADDR="198.51.100.7"), 401, "invalid_api_key")


def test_revoked_keys_and_malformed_headers_count_as_failures(alice, anon, lockout):
    alice.customer.api_keys.get().revoke()
    revoked = with_key(anon, alice.key)
    for _ in range(5):
        assert_error(send(revoked), 401, "revoked_api_key")
    anon.credentials(HTTP_AUTHORIZATION="Bearer two words")
    for _ in range(5):
        assert_error(send(anon), 401, "invalid_api_key")
    assert_error(send(anon), 429, "rate_limited")


def test_the_lockout_ends_after_its_cool_down(alice, anon, settings):
    settings.MAILQ_AUTH_FAILURE_RATE = "2/h"
    settings.MAILQ_AUTH_LOCKOUT_SECONDS = 1
    guesser = with_key(anon, "mq_wrong")
    for _ in range(2):
        assert_error(send(guesser), 401, "invalid_api_key")
    assert_error(send(guesser), 429, "rate_limited")  # the third failure locks the IP
    assert_error(send(alice.client), 429, "rate_limited")
    time.sleep(1.1)
    assert send(alice.client).status_code == 202


@pytest.fixture
def thresholds(settings):
    # A day-long window, so a window edge cannot fall inside the test.
    settings.MAILQ_ABUSE_WINDOW_SECONDS = 86400
    settings.MAILQ_ABUSE_FLAG_MIN_REQUESTS = 10
    settings.MAILQ_ABUSE_FLAG_INVALID_RATIO = 0.5
    settings.MAILQ_ABUSE_FLAG_REFUSED = 5
    settings.MAILQ_ABUSE_SUSPEND_MIN_REQUESTS = 20
    settings.MAILQ_ABUSE_SUSPEND_INVALID_RATIO = 0.9
    settings.MAILQ_ABUSE_SUSPEND_REFUSED = 10


def fresh(account) -> Customer:
    return Customer.objects.get(pk=account.customer.pk)


def test_mostly_invalid_requests_flag_and_then_suspend_a_customer(alice, thresholds):
    for _ in range(9):
        assert_error(send(alice.client, INVALID), 422, "validation_error")
    assert fresh(alice).flagged_at is None  # under the minimum number of requests
    assert_error(send(alice.client, INVALID), 422, "validation_error")
    flagged = fresh(alice)
    assert flagged.flagged_at is not None
    assert flagged.flag_reason == "automatic: 10 of 10 requests invalid within 86400 s"
    assert flagged.status == Customer.Status.ACTIVE

    for _ in range(10):
        send(alice.client, INVALID)
    suspended = fresh(alice)
    assert suspended.status == Customer.Status.SUSPENDED
    assert suspended.suspended_at is not None
    assert suspended.suspension_reason == "automatic: 20 of 20 requests invalid within 86400 s"
    assert_error(send(alice.client), 403, "customer_suspended")


def test_a_customer_with_a_few_invalid_requests_among_good_ones_is_left_alone(alice, thresholds):
    for i in range(40):
        response = send(alice.client, INVALID if i % 4 == 0 else None)
        assert response.status_code in (202, 422)
    customer = fresh(alice)
    assert customer.flagged_at is None
    assert customer.status == Customer.Status.ACTIVE


def test_hammering_past_the_rate_limit_flags_then_suspends(alice, thresholds):
    limit(alice, api_rate_per_second=1, api_burst=1)
    assert send(alice.client).status_code == 202
    for _ in range(5):
        assert_error(send(alice.client), 429, "rate_limited")
    assert "5 requests refused by rate limit or quota" in fresh(alice).flag_reason
    for _ in range(5):
        send(alice.client)
    assert fresh(alice).status == Customer.Status.SUSPENDED
    assert_error(send(alice.client), 403, "customer_suspended")


def test_an_operator_reinstates_a_suspended_customer(alice, admin_client, thresholds):
    for _ in range(20):
        send(alice.client, INVALID)
    assert_error(send(alice.client), 403, "customer_suspended")

    response = admin_client.post(
        "/admin/customers/customer/",
        {"action": "reinstate", "_selected_action": [alice.customer.pk]},
    )
    assert response.status_code == 302
    customer = fresh(alice)
    assert customer.status == Customer.Status.ACTIVE
    assert customer.suspended_at is None and customer.suspension_reason == ""
    assert customer.flagged_at is None
    assert send(alice.client).status_code == 202
    # Judged afresh: one more invalid request does not suspend it again at once.
    send(alice.client, INVALID)
    assert fresh(alice).status == Customer.Status.ACTIVE


def test_an_operator_suspends_by_hand_with_a_reason(alice, admin_client):
    admin_client.post(
        "/admin/customers/customer/",
        {"action": "suspend", "_selected_action": [alice.customer.pk]},
    )
    customer = fresh(alice)
    assert customer.status == Customer.Status.SUSPENDED
    assert customer.suspension_reason == "by admin in the admin"
    assert_error(send(alice.client), 403, "customer_suspended")
