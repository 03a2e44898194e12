"""GET /v1/stats and the per-minute rollups behind it, written by the real worker path."""

from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone

from delivery import sending, stats
from delivery.models import LATENCY_BOUNDS, Message, MinuteRollup, Status
from tests.conftest import wait_until
from tests.factories import accepted, template


def _deliver_with_latencies(customer, latencies: list[float], **fields) -> list[Message]:
    """Accept one message per latency, backdate its acceptance by that much, and send it."""
    messages = accepted(customer, count=len(latencies), **fields)
    now = timezone.now()
    for message, seconds in zip(messages, latencies, strict=True):
        Message.objects.filter(pk=message.pk).update(accepted_at=now - timedelta(seconds=seconds))
    sending.deliver([str(m.id) for m in messages])
    return messages


def _totals(customer) -> dict:
    rows = MinuteRollup.objects.filter(customer=customer)
    buckets = [0] * stats.BUCKETS
    for row in rows:
        buckets = [a + b for a, b in zip(buckets, row.buckets, strict=True)]
    return {
        **{s: sum(getattr(r, s) for r in rows) for s in ("sent", "failed", "dead", "cancelled")},
        "buckets": buckets,
    }


# --- the histogram arithmetic ---------------------------------------------------------------


def test_a_percentile_interpolates_linearly_inside_the_bucket_holding_its_rank():
    buckets = [0] * stats.BUCKETS
    buckets[stats.bucket_of(0.3)] = 50  # [0.25, 0.5)
    buckets[stats.bucket_of(3.0)] = 45  # [2.5, 5)
    buckets[stats.bucket_of(40.0)] = 5  # [30, 60)
    assert stats.percentile(buckets, 50) == pytest.approx(0.5)
    assert stats.percentile(buckets, 25) == pytest.approx(0.375)
    assert stats.percentile(buckets, 95) == pytest.approx(5.0)
    assert stats.percentile(buckets, 99) == pytest.approx(30 + 30 * 4 / 5)


def test_a_percentile_past_the_last_bound_answers_that_bound_and_none_without_samples():
    buckets = [0] * stats.BUCKETS
    assert stats.percentile(buckets, 50) is None
    buckets[-1] = 3
    assert stats.percentile(buckets, 99) == LATENCY_BOUNDS[-1]


def test_buckets_hold_their_lower_bound_like_sql_width_bucket():
    assert stats.bucket_of(0.0) == 0
    assert stats.bucket_of(0.01) == 1
    assert stats.bucket_of(3600) == len(LATENCY_BOUNDS)


# --- writing: exactly the transitions that committed ----------------------------------------


def test_the_worker_adds_sent_failed_and_dead_messages_to_the_minute_they_finished(
    alice, providers, settings
):
    settings.MAILQ_MAX_ATTEMPTS = 1
    _deliver_with_latencies(alice.customer, [15.0, 15.0, 40.0])
    providers.refusals["bad@example.com"] = ["550 5.1.1 no such user"]
    accepted_bad = accepted(alice.customer, to="bad@example.com")
    providers.refusals["busy@example.com"] = ["451 4.3.0 busy"]
    accepted_busy = accepted(alice.customer, to="busy@example.com")
    sending.deliver([str(m.id) for m in accepted_bad + accepted_busy])

    totals = _totals(alice.customer)
    assert totals | {"buckets": None} == {
        "sent": 3,
        "failed": 1,
        "dead": 1,
        "cancelled": 0,
        "buckets": None,
    }
    assert totals["buckets"][stats.bucket_of(15.0)] == 2
    assert totals["buckets"][stats.bucket_of(40.0)] == 1
    row = MinuteRollup.objects.filter(customer=alice.customer).first()
    assert row.template.slug == "welcome" and row.minute.second == 0
    assert row.latency_sum == pytest.approx(70.0, abs=2)


def test_a_message_that_will_be_retried_is_not_counted_until_it_finishes(alice, providers):
    providers.refusals["ana@example.com"] = ["451 4.3.0 busy"]
    [message] = accepted(alice.customer)
    assert sending.deliver([str(message.id)]).counts == {"retrying": 1}
    assert not MinuteRollup.objects.exists()
    Message.objects.filter(pk=message.pk).update(status=Status.QUEUED)
    sending.deliver([str(message.id)])
    assert _totals(alice.customer)["sent"] == 1


def test_a_second_delivery_or_a_stale_record_counts_nothing_more(alice, providers):
    messages = accepted(alice.customer, count=3)
    ids = [str(m.id) for m in messages]
    claimed = Message.objects.claim(ids)
    outcomes = [sending.Outcome(m, Status.SENT, timezone.now()) for m in claimed]
    sending._record(outcomes)
    sending._record(outcomes)  # a worker recording the same group again changes no row
    sending.deliver(ids)  # a redelivered task: the claim lets nothing through
    assert _totals(alice.customer)["sent"] == 3


def test_a_record_after_the_lease_was_reclaimed_counts_nothing(alice, providers):
    [message] = accepted(alice.customer)
    [claimed] = Message.objects.claim([str(message.id)])
    # The sweeper reclaimed it and another worker claimed it again (a new sending_at).
    Message.objects.filter(pk=message.pk).update(sending_at=timezone.now() + timedelta(seconds=1))
    sending._record([sending.Outcome(claimed, Status.SENT, timezone.now())])
    assert not MinuteRollup.objects.exists()


def test_cancelling_counts_once_and_a_refused_cancel_counts_nothing(alice, providers):
    [message, other] = accepted(alice.customer, count=2)
    sending.deliver([str(other.id)])
    for _ in range(2):
        assert alice.client.delete(f"/v1/messages/{message.id}").status_code == 200
    assert alice.client.delete(f"/v1/messages/{other.id}").status_code == 409
    assert _totals(alice.customer) | {"buckets": None} == {
        "sent": 1,
        "failed": 0,
        "dead": 0,
        "cancelled": 1,
        "buckets": None,
    }


def test_a_scheduled_send_counts_its_latency_from_send_at(alice, providers):
    send_at = timezone.now() - timedelta(seconds=1)
    [message] = accepted(alice.customer, send_at=send_at)
    Message.objects.filter(pk=message.pk).update(accepted_at=send_at - timedelta(hours=5))
    sending.deliver([str(message.id)])
    buckets = _totals(alice.customer)["buckets"]
    assert buckets[stats.bucket_of(1.0)] == 1  # 1 s after send_at, not 5 h after acceptance


def test_rebuild_recomputes_the_same_rollups_from_the_messages(alice, bob, providers):
    _deliver_with_latencies(alice.customer, [0.02, 0.7, 12.0, 12.0])
    _deliver_with_latencies(bob.customer, [1.5])
    before = {c.pk: _totals(c) for c in (alice.customer, bob.customer)}
    stats.rebuild(timezone.now() - timedelta(days=1))
    assert {c.pk: _totals(c) for c in (alice.customer, bob.customer)} == before
    assert set(MinuteRollup.objects.values_list("shard", flat=True)) == {0}


# --- GET /v1/stats --------------------------------------------------------------------------


def test_stats_answers_percentiles_and_counts_for_known_latencies(alice, providers):
    # Each well inside its bucket, so the time the sends take does not move it to the next.
    latencies = [12.0] * 40 + [70.0] * 55 + [700.0] * 5
    _deliver_with_latencies(alice.customer, latencies)
    accepted(alice.customer, count=2)  # queued, not finished

    response = alice.client.get("/v1/stats")
    assert response.status_code == 200
    body = response.json()
    for window in ("last_hour", "last_day"):
        assert body[window]["counts"] == {"sent": 100, "failed": 0, "dead": 0, "cancelled": 0}
        latency = body[window]["latency"]
        assert latency["samples"] == 100
        # Ranks 50, 95, 99 fall in the buckets [60, 120), [60, 120), [600, 1800): interpolated
        # linearly inside them (the exact values are 70, 70 and 700).
        assert latency["p50"] == pytest.approx(60 + 60 * 10 / 55, abs=1e-3)
        assert latency["p95"] == pytest.approx(120.0)
        assert latency["p99"] == pytest.approx(600 + 1200 * 4 / 5)
        assert latency["mean"] == pytest.approx(sum(latencies) / 100, rel=0.05)
    assert body["unfinished"] == {"deferred": 0, "queued": 2, "sending": 0, "retrying": 0}
    assert body["unfinished_exact"] is True
    assert body["template"] is None
    assert body["latency_bucket_bounds"] == list(LATENCY_BOUNDS)


def test_stats_splits_the_last_hour_from_the_last_day(alice, providers):
    _deliver_with_latencies(alice.customer, [0.3, 0.3])
    MinuteRollup.objects.update(minute=timezone.now().replace(second=0) - timedelta(hours=3))
    _deliver_with_latencies(alice.customer, [2.0])
    body = alice.client.get("/v1/stats").json()
    assert body["last_hour"]["counts"]["sent"] == 1
    assert body["last_day"]["counts"]["sent"] == 3
    MinuteRollup.objects.update(minute=F("minute") - timedelta(days=2))
    assert alice.client.get("/v1/stats").json()["last_day"]["counts"]["sent"] == 0


def test_stats_for_one_template_counts_only_its_messages(alice, providers):
    template(alice.customer, slug="invoice")
    _deliver_with_latencies(alice.customer, [0.3, 0.3])
    _deliver_with_latencies(alice.customer, [20.0], template_slug="invoice")
    accepted(alice.customer, template_slug="invoice")

    body = alice.client.get("/v1/stats?template=invoice").json()
    assert body["template"] == "invoice"
    assert body["last_hour"]["counts"]["sent"] == 1
    assert body["last_hour"]["latency"]["samples"] == 1
    assert 10 <= body["last_hour"]["latency"]["p50"] <= 30
    assert body["unfinished"]["queued"] == 1
    assert alice.client.get("/v1/stats").json()["last_hour"]["counts"]["sent"] == 3


def test_a_customer_sees_only_its_own_stats(alice, bob, providers):
    template(alice.customer, slug="alice-only")
    _deliver_with_latencies(alice.customer, [0.3] * 4)
    accepted(alice.customer, count=3)

    body = bob.client.get("/v1/stats").json()
    assert body["last_day"]["counts"]["sent"] == 0
    assert body["last_day"]["latency"] == {
        "p50": None,
        "p95": None,
        "p99": None,
        "mean": None,
        "samples": 0,
    }
    assert body["unfinished"]["queued"] == 0
    # Bob has a "welcome" template of his own: alice's messages through hers are not his.
    assert bob.client.get("/v1/stats?template=welcome").json()["last_day"]["counts"]["sent"] == 0
    response = bob.client.get("/v1/stats?template=alice-only")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_template"


def test_stats_answers_422_for_an_unknown_template_and_bad_parameters(alice):
    response = alice.client.get("/v1/stats?template=nope")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "unknown_template",
        "message": "No template 'nope'.",
        "fields": {"template": ["Unknown template 'nope'."]},
    }
    for query in ("template=not%20a%20slug", "window=week", "template=" + "a" * 101):
        response = alice.client.get(f"/v1/stats?{query}")
        assert response.status_code == 422, query
        assert response.json()["error"]["code"] == "validation_error"


def test_stats_needs_an_api_key(anon):
    response = anon.get("/v1/stats")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_stats_of_a_deleted_template_are_still_found_by_its_slug(alice, providers):
    _deliver_with_latencies(alice.customer, [0.3])
    assert alice.client.delete("/v1/templates/welcome").status_code == 204
    body = alice.client.get("/v1/stats?template=welcome").json()
    assert body["last_hour"]["counts"]["sent"] == 1


def test_unfinished_counts_stop_at_the_live_limit_and_say_so(alice, settings):
    settings.MAILQ_STATS_LIVE_LIMIT = 3
    accepted(alice.customer, count=5)
    body = alice.client.get("/v1/stats").json()
    assert body["unfinished"]["queued"] == 3
    assert body["unfinished_exact"] is False


def test_the_rebuild_command_backfills_rollups_from_messages(alice, providers):
    from io import StringIO

    from django.core.management import call_command

    _deliver_with_latencies(alice.customer, [15.0, 40.0])
    MinuteRollup.objects.all().delete()
    out = StringIO()
    call_command("rebuild_stats", "--hours", "2", stdout=out)
    assert "rollup rows written for the last 2 h" in out.getvalue()
    assert _totals(alice.customer)["sent"] == 2


def test_the_sweeper_prunes_rollups_past_the_retention_in_bounded_batches(alice, settings):
    from delivery import sweeper

    settings.MAILQ_SWEEP_BATCH = 2
    now = timezone.now().replace(second=0, microsecond=0)
    welcome = alice.customer.templates.get(slug="welcome")
    for days in (0, 7, 9, 10, 11):
        MinuteRollup.objects.create(
            customer=alice.customer,
            template=welcome,
            minute=now - timedelta(days=days),
            buckets=[0] * stats.BUCKETS,
        )
    assert sweeper.sweep()["pruned"] == 2  # the two oldest first
    assert stats.prune(timezone.now()) == 1
    assert stats.prune(timezone.now()) == 0
    kept = sorted((now - m).days for m in MinuteRollup.objects.values_list("minute", flat=True))
    assert kept == [0, 7]


@pytest.mark.e2e
def test_real_workers_fill_the_stats_of_a_batch_sent_over_the_api(alice, worker, smtp_sink):
    items = [
        {"template": "welcome", "to": f"u{i}@example.com", "data": {"name": "N"}}
        for i in range(120)
    ]
    response = alice.client.post("/v1/messages/batch", {"messages": items}, format="json")
    assert response.json()["accepted"] == 120
    smtp_sink.wait_for(120)

    def sent() -> int:
        return alice.client.get("/v1/stats").json()["last_hour"]["counts"]["sent"]

    assert wait_until(lambda: sent() == 120)
    body = alice.client.get("/v1/stats").json()
    assert body["last_hour"]["latency"]["samples"] == 120
    assert 0 < body["last_hour"]["latency"]["p50"] <= body["last_hour"]["latency"]["p99"] < 30
    assert body["unfinished"] == {"deferred": 0, "queued": 0, "sending": 0, "retrying": 0}
