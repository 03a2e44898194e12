"""Daily and monthly quotas: counted once per accepted message (batches item by item, replays
and invalid items not at all), refused with 429 quota_exceeded, reset at UTC period boundaries,
exact in PostgreSQL and enforced in Redis even across a Redis flush."""

from datetime import UTC, datetime, timedelta

from django.core.cache import cache

from customers import quotas, throttling
from customers.models import Usage
from tests.customers.helpers import batch, limit, send, usage, used
from tests.delivery.test_api_errors import assert_error
from tests.factories import CustomerFactory

IP = "192.0.2.1"


def test_a_batch_of_500_counts_500(alice):
    response = batch(alice.client, 500)
    assert response.status_code == 202
    assert used(alice) == (500, 500)
    # Redis agrees: the next response reports what is left.
    assert '"day";r=199499;' in send(alice.client)["RateLimit"]
    assert used(alice) == (501, 501)


def test_an_idempotent_replay_is_not_counted_twice(alice):
    first = send(alice.client, HTTP_IDEMPOTENCY_KEY="reset-42")
    replay = send(alice.client, HTTP_IDEMPOTENCY_KEY="reset-42")
    assert replay.status_code == 202
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert used(alice) == (1, 1)
    # The replay's reservation was given back, in Redis and in its own headers.
    assert '"day";r=199999;' in replay["RateLimit"]
    assert '"day";r=199998;' in send(alice.client)["RateLimit"]


def test_invalid_batch_items_and_invalid_sends_are_not_counted(alice):
    response = batch(alice.client, 3, invalid=2)
    assert response.json()["accepted"] == 3
    unknown = send(alice.client, {"template": "nope", "to": "ana@example.com"})
    assert_error(unknown, 422, "unknown_template")
    assert used(alice) == (3, 3)
    assert '"day";r=199996;' in send(alice.client)["RateLimit"]


def test_over_the_daily_quota_is_429_quota_exceeded_with_its_reset(alice):
    limit(alice, daily_quota=2)
    assert send(alice.client).status_code == 202
    assert send(alice.client).status_code == 202

    refused = send(alice.client)
    error = assert_error(refused, 429, "quota_exceeded")
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert error["fields"] == {
        "period": "day",
        "limit": 2,
        "resets_at": f"{tomorrow.isoformat()}T00:00:00Z",
    }
    midnight = datetime.combine(tomorrow, datetime.min.time(), tzinfo=UTC)
    seconds_left = (midnight - datetime.now(UTC)).total_seconds()
    assert abs(int(refused["Retry-After"]) - seconds_left) <= 2
    assert '"day";r=0;' in refused["RateLimit"]
    assert used(alice) == (2, 2)


def test_a_batch_over_the_remaining_quota_is_refused_whole(alice):
    limit(alice, daily_quota=10)
    assert batch(alice.client, 4).status_code == 202
    assert_error(batch(alice.client, 7), 429, "quota_exceeded")
    assert batch(alice.client, 6).status_code == 202
    assert used(alice) == (10, 10)


def test_the_monthly_quota_is_enforced_too(alice):
    limit(alice, monthly_quota=3)
    assert batch(alice.client, 3).status_code == 202
    error = assert_error(send(alice.client), 429, "quota_exceeded")
    assert error["fields"]["period"] == "month"
    assert error["fields"]["resets_at"].endswith("-01T00:00:00Z")


def test_quotas_reset_at_the_utc_day_and_month_boundaries(db):
    customer = CustomerFactory()
    customer.daily_quota, customer.monthly_quota = 3, 5

    def take(count: int, now: datetime) -> int:
        return throttling.take(customer, count, count, IP, now=now).outcome

    last_second = datetime(2030, 1, 30, 23, 59, 59, 999_999, tzinfo=UTC)
    assert take(3, last_second) == throttling.OK
    assert take(1, last_second) == throttling.DAY_QUOTA
    midnight = datetime(2030, 1, 31, tzinfo=UTC)
    assert take(2, midnight) == throttling.OK  # a new day; the month has 5 of 5 now
    assert take(1, midnight) == throttling.MONTH_QUOTA
    refused = throttling.take(customer, 1, 1, IP, now=datetime(2030, 1, 31, 23, 0, tzinfo=UTC))
    assert refused.refusal().retry_after == 3600
    assert take(1, datetime(2030, 2, 1, tzinfo=UTC)) == throttling.OK  # a new month


def test_quotas_are_enforced_from_postgresql_after_a_redis_flush(alice):
    limit(alice, daily_quota=5)
    assert batch(alice.client, 3).status_code == 202
    cache.clear()  # FLUSHDB: the Redis counters are gone

    assert batch(alice.client, 2).status_code == 202  # re-seeded with 3 from PostgreSQL
    assert_error(send(alice.client), 429, "quota_exceeded")
    assert used(alice) == (5, 5)


def test_the_usage_endpoint_reports_exact_utc_day_and_month_counts(alice):
    today = datetime.now(UTC).date()
    first = today.replace(day=1)
    earlier = [first - timedelta(days=1), today - timedelta(days=1)]  # last month, yesterday
    for shard, day in enumerate(earlier):
        Usage.objects.create(customer=alice.customer, day=day, shard=shard, messages=100)
    batch(alice.client, 7)

    body = usage(alice)
    this_month = sum(100 for day in earlier if day >= first)
    assert body["rate"] == {"per_second": 100, "burst": 2000}
    assert body["day"] == {
        "period": today.isoformat(),
        "used": 7,
        "limit": 200_000,
        "remaining": 199_993,
        "resets_at": f"{(today + timedelta(days=1)).isoformat()}T00:00:00Z",
    }
    assert body["month"]["period"] == today.strftime("%Y-%m")
    assert body["month"]["used"] == 7 + this_month
    assert body["month"]["limit"] == 5_000_000


def test_a_customer_sees_only_its_own_usage(alice, bob):
    batch(alice.client, 4)
    assert usage(bob)["day"]["used"] == 0
    assert usage(alice)["day"]["used"] == 4


def test_usage_rows_are_summed_across_shards(alice):
    for _ in range(40):  # with 8 shards, 40 sends land on several rows
        assert send(alice.client).status_code == 202
    rows = Usage.objects.filter(customer=alice.customer)
    assert rows.count() > 1
    assert sum(rows.values_list("messages", flat=True)) == 40
    assert quotas.usage(alice.customer)[0].used == 40
