"""The operators' admin: limits, usage, flags and keys, without a shell; list pages stay a fixed
number of queries however many customers there are."""

from datetime import UTC, datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext

from customers.models import ApiKey, Customer, Usage
from tests.customers.helpers import batch, send
from tests.factories import CustomerFactory, tier

CUSTOMERS = "/admin/customers/customer/"


def queries_for(admin_client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert admin_client.get(url).status_code == 200
    return len(captured)


def add_customers(count: int) -> None:
    today = datetime.now(UTC).date()
    for _ in range(count):
        customer = CustomerFactory(tier=tier("free"))
        customer.issue_key()
        Usage.objects.create(customer=customer, day=today, messages=3)


def test_the_customer_list_makes_as_many_queries_for_30_customers_as_for_3(admin_client):
    add_customers(3)
    few = queries_for(admin_client, CUSTOMERS)
    add_customers(27)
    assert queries_for(admin_client, CUSTOMERS) == few


def test_the_key_list_makes_as_many_queries_for_30_keys_as_for_3(admin_client):
    add_customers(3)
    few = queries_for(admin_client, "/admin/customers/apikey/")
    add_customers(27)
    assert queries_for(admin_client, "/admin/customers/apikey/") == few


def test_the_customer_list_shows_limits_usage_and_flags(admin_client, alice, bob):
    batch(alice.client, 7)
    Customer.objects.filter(pk=bob.customer.pk).update(
        api_rate_per_second=7, api_burst=70, daily_quota=1000, flagged_at=datetime.now(UTC)
    )
    page = admin_client.get(CUSTOMERS).content.decode()
    assert '<td class="field-rate_limit">100/s, 2,000</td>' in page
    assert '<td class="field-used_today">7 / 200,000</td>' in page
    assert '<td class="field-rate_limit">7/s, 70</td>' in page
    assert '<td class="field-used_today">0 / 1,000</td>' in page
    flagged = admin_client.get(CUSTOMERS + "?flagged_at__isempty=0").content.decode()
    assert ">bob<" in flagged and ">alice<" not in flagged


def test_the_change_page_shows_exact_usage_and_the_abuse_record(admin_client, alice):
    batch(alice.client, 3)
    alice.customer.suspend("automatic: testing")
    page = admin_client.get(f"{CUSTOMERS}{alice.customer.pk}/change/").content.decode()
    assert "<td>3</td><td>200,000</td><td>199,997</td>" in page
    assert "automatic: testing" in page


def test_an_operator_overrides_a_customers_limits_in_the_change_form(admin_client, alice):
    url = f"{CUSTOMERS}{alice.customer.pk}/change/"
    form = {
        "name": "alice",
        "tier": alice.customer.tier_id,
        "default_from": "",
        "api_rate_per_second": "1",
        "api_burst": "1",
        "daily_quota": "",
        "monthly_quota": "",
        "inflight_cap": "",
        "api_keys-TOTAL_FORMS": "1",
        "api_keys-INITIAL_FORMS": "1",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
        "api_keys-0-id": alice.customer.api_keys.get().pk,
        "api_keys-0-customer": alice.customer.pk,
        "api_keys-0-name": "",
        "api_keys-0-revoked_at_0": "",
        "api_keys-0-revoked_at_1": "",
    }
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert send(alice.client).status_code == 202
    assert send(alice.client).status_code == 429


def test_an_issued_key_is_shown_once_and_works(admin_client, alice, client):
    response = admin_client.post(
        CUSTOMERS, {"action": "issue_key", "_selected_action": [alice.customer.pk]}, follow=True
    )
    text = response.content.decode()
    raw = text.split("New key for alice: ")[1].split("<")[0].strip()
    assert ApiKey.objects.for_key(raw).customer == alice.customer
    assert raw not in admin_client.get(CUSTOMERS).content.decode()

    ApiKey.objects.for_key(raw).revoke()
    revoked = client.get("/v1/usage", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert revoked.status_code == 401
