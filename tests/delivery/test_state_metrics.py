"""The gauges read at scrape time: queue depth, deferred, in flight, the quiet-customer SLI,
dead letters, breaker states (delivery/snapshot.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import breaker, routing
from delivery.models import Message, Status
from delivery.providers import build_chain
from mailq.celery import app
from tests.conftest import free_port
from tests.delivery.scrape import scrape, total
from tests.factories import accepted, queue


def put(messages, status: Status, age: float = 0.0, **fields) -> None:
    """Move messages to `status`, as if queued or accepted `age` seconds ago."""
    then = timezone.now() - timedelta(seconds=age)
    Message.objects.filter(pk__in=[m.pk for m in messages]).update(
        status=status, queued_at=then, accepted_at=then, **fields
    )


def gauge(samples, name: str, **labels: str) -> float:
    return total(samples, name, **labels)


def test_the_state_gauges_count_what_waits_where_per_tier(client, alice, bob, charlie):
    future = timezone.now() + timedelta(hours=1)
    # alice bursts: a backlog of 3 (oldest 60 s), 2 queued for 20 s: she is not quiet.
    put(accepted(alice.customer, 3), Status.DEFERRED, age=60)
    put(accepted(alice.customer, 2), Status.QUEUED, age=20)
    # bob is quiet: one message queued for 5 s, one sending, and some waiting for their time.
    put(accepted(bob.customer, 1), Status.QUEUED, age=5)
    put(accepted(bob.customer, 1), Status.SENDING)
    put(accepted(bob.customer, 1), Status.RETRYING, release_at=future)
    put(accepted(bob.customer, 1), Status.DEFERRED, release_at=future)
    put(accepted(bob.customer, 2), Status.DEAD)
    put(accepted(bob.customer, 1), Status.FAILED)
    # charlie (premium): sent, nothing waits.
    put(accepted(charlie.customer, 1), Status.SENT)

    samples = scrape(client)
    std = {"tier": "standard"}
    assert gauge(samples, "mailq_deferred_messages", reason="backlog", **std) == 3
    assert gauge(samples, "mailq_deferred_messages", reason="scheduled", **std) == 1
    assert gauge(samples, "mailq_retrying_messages", **std) == 1
    assert gauge(samples, "mailq_inflight_messages", status="queued", **std) == 3
    assert gauge(samples, "mailq_inflight_messages", status="sending", **std) == 1
    assert gauge(samples, "mailq_dead_letters", status="dead", **std) == 2
    assert gauge(samples, "mailq_dead_letters", status="failed", **std) == 1
    assert gauge(samples, "mailq_backlogged_customers", **std) == 1
    assert gauge(samples, "mailq_backlog_oldest_age_seconds", **std) == pytest.approx(60, abs=3)
    assert gauge(samples, "mailq_oldest_queued_age_seconds", **std) == pytest.approx(20, abs=3)
    # The SLI leaves out alice (she has a backlog): bob's 5 s.
    quiet = gauge(samples, "mailq_quiet_oldest_queued_age_seconds", **std)
    assert quiet == pytest.approx(5, abs=3)
    prem = {"tier": "premium"}
    quiet = ("mailq_quiet_oldest_queued_age_seconds", frozenset(prem.items()))
    assert samples[quiet] == 0  # every tier has its series
    assert gauge(samples, "mailq_dead_letters", **prem) == 0
    assert gauge(samples, "mailq_state_source_up", source="postgresql") == 1
    assert gauge(samples, "mailq_state_source_up", source="rabbitmq") == 1


def test_queue_depth_is_read_from_the_broker_per_tier_and_lane(client, alice, broker):
    messages = accepted(alice.customer, 3)
    name = queue("standard")
    for m in messages:  # one task each (together they would make one batch task)
        assert routing.publish([(str(m.id), name, m.customer_id)]) == 1
    samples = scrape(client)
    depth = "mailq_queue_messages"
    assert gauge(samples, depth, tier="standard", lane="bulk") == 3
    assert gauge(samples, depth, tier="standard", lane="express") == 0
    assert gauge(samples, depth, tier="premium", lane="bulk") == 0
    assert gauge(samples, "mailq_queue_consumers", tier="standard", lane="bulk") == 0


def test_breaker_states_are_exported_one_series_per_state(client, db, settings):
    settings.MAILQ_PROVIDERS = ["smtp://127.0.0.1:2525", "console://"]
    first, second = (p.name for p in build_chain(settings.MAILQ_PROVIDERS))
    # As a worker leaves it when the provider's breaker opens (pybreaker's Redis keys).
    state_key = breaker._state_keys(first)[0]
    breaker._client().set(state_key, "open")
    try:
        samples = scrape(client)
    finally:
        breaker._client().delete(state_key)
    name = "mailq_provider_circuit_state"
    assert gauge(samples, name, provider=first, state="open") == 1
    assert gauge(samples, name, provider=first, state="closed") == 0
    assert gauge(samples, name, provider=first, state="half-open") == 0
    assert gauge(samples, name, provider=second, state="closed") == 1


def test_with_rabbitmq_away_a_scrape_still_answers_and_says_so(client, alice, monkeypatch):
    # Nothing listens there: the connection is refused, as when RabbitMQ is down.
    monkeypatch.setitem(
        app.conf, "broker_read_url", f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    )
    put(accepted(alice.customer, 2), Status.DEFERRED)
    samples = scrape(client)
    assert gauge(samples, "mailq_state_source_up", source="rabbitmq") == 0
    assert gauge(samples, "mailq_state_source_up", source="postgresql") == 1
    assert not any(name == "mailq_queue_messages" for name, _ in samples)  # unknown, not 0
    assert gauge(samples, "mailq_deferred_messages", tier="standard", reason="backlog") == 2
