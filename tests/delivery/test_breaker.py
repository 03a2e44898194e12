"""Circuit breakers in the provider chain: an HTTP provider (a real local server speaking
Postmark's API) first, the SMTP sink second, breaker state in the test Redis."""

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from delivery import breaker, sending
from delivery.models import DeliveryAttempt, Message, Status
from tests.conftest import Sink, free_port
from tests.factories import accepted
from tests.fake_esp import ERROR, INVALID, OK, SLOW, FakeEsp


@pytest.fixture
def fake() -> Iterator[FakeEsp]:
    with FakeEsp("postmark") as server:
        yield server


@pytest.fixture
def chain(settings, fake, smtp_sink) -> Iterator[tuple[str, str]]:
    """Postmark (the fake) first, SMTP second; breakers trip after 3 failures, reset in 1 s."""
    settings.MAILQ_PROVIDERS = [fake.provider_url(timeout=0.3), smtp_sink.url]
    settings.MAILQ_BREAKER_FAIL_MAX = 3
    settings.MAILQ_BREAKER_RESET_SECONDS = 1
    sending.close_providers()
    yield tuple(p.name for p in sending.provider_chain())
    sending.close_providers()


def deliver_each(customer, count: int) -> list[Message]:
    """One task per message, as the real-time path runs them."""
    messages = accepted(customer, count=count)
    for message in messages:
        sending.deliver([str(message.id)])
    return [Message.objects.get(pk=m.pk) for m in messages]


def test_it_opens_after_consecutive_temporary_failures_and_fails_over_at_once(
    alice, fake, smtp_sink: Sink, chain
):
    http, smtp = chain
    fake.set_mode(ERROR)
    messages = deliver_each(alice.customer, 6)
    assert {m.status for m in messages} == {Status.SENT}
    assert {m.provider for m in messages} == {smtp}
    assert len(smtp_sink.received) == 6
    # Three real failures opened it; the next three skipped the provider without calling it.
    assert fake.requests == 3
    assert DeliveryAttempt.objects.filter(provider=http).count() == 3
    assert breaker.states() == {http: "open", smtp: "closed"}


def test_timeouts_trip_it_too(alice, fake, smtp_sink, chain):
    http, _ = chain
    fake.set_mode(SLOW)
    deliver_each(alice.customer, 5)
    assert fake.requests == 3 and len(smtp_sink.received) == 5  # two paid no timeout
    assert breaker.states()[http] == "open"


def test_a_success_resets_the_count_of_failures_in_a_row(alice, fake, smtp_sink, chain):
    http, _ = chain
    for mode in (ERROR, ERROR, OK, ERROR, ERROR):
        fake.set_mode(mode)
        deliver_each(alice.customer, 1)
    assert breaker.states()[http] == "closed"
    assert breaker.snapshot([http])[0].failures == 2


def test_permanent_errors_never_trip_it(alice, fake, smtp_sink, chain):
    http, _ = chain
    fake.set_mode(INVALID)
    messages = deliver_each(alice.customer, 5)
    assert {m.status for m in messages} == {Status.FAILED}
    assert fake.requests == 5 and smtp_sink.received == []
    assert breaker.states()[http] == "closed"


def test_it_half_opens_after_the_cool_down_and_closes_when_the_probe_succeeds(
    alice, fake, smtp_sink, chain
):
    http, _ = chain
    fake.set_mode(ERROR)
    deliver_each(alice.customer, 3)
    assert breaker.states()[http] == "open"
    fake.set_mode(OK)
    deliver_each(alice.customer, 1)
    assert fake.received == []  # still open: skipped
    time.sleep(2.1)  # the cool-down, plus the second pybreaker rounds off
    [probe] = deliver_each(alice.customer, 1)
    assert probe.provider == http and len(fake.received) == 1
    assert breaker.states()[http] == "closed"


def test_a_failed_probe_opens_it_again(alice, fake, smtp_sink, chain):
    http, smtp = chain
    fake.set_mode(ERROR)
    deliver_each(alice.customer, 3)
    time.sleep(2.1)  # the cool-down, plus the second pybreaker rounds off
    [message] = deliver_each(alice.customer, 1)
    assert fake.requests == 4  # the probe
    assert message.status == Status.SENT and message.provider == smtp
    assert breaker.states()[http] == "open"
    deliver_each(alice.customer, 1)
    assert fake.requests == 4


def test_after_the_cool_down_only_one_send_across_all_workers_probes(alice, fake, smtp_sink, chain):
    http, _ = chain
    fake.set_mode(SLOW)
    deliver_each(alice.customer, 3)
    time.sleep(2.1)  # the cool-down, plus the second pybreaker rounds off
    client = breaker._client()
    probe_key = f"mailq:breaker:{http}:probe"
    client.set(probe_key, b"1")  # another worker is probing right now
    deliver_each(alice.customer, 2)
    assert fake.requests == 3  # skipped: nobody else pays the timeout
    client.delete(probe_key)
    deliver_each(alice.customer, 1)
    assert fake.requests == 4
    assert not client.exists(probe_key)  # freed for the next cool-down


def test_a_prober_that_died_does_not_keep_the_provider_skipped(alice, fake, smtp_sink, chain):
    http, _ = chain
    breaker._client().set(f"mailq:breaker:{http}:pybreaker:state", b"half-open")  # and no key
    [message] = deliver_each(alice.customer, 1)
    assert message.provider == http
    assert breaker.states()[http] == "closed"


def test_every_process_sees_the_same_breaker(alice, fake, smtp_sink, chain):
    http, _ = chain
    assert breaker.states()[http] == "closed"
    fake.set_mode(ERROR)
    deliver_each(alice.customer, 3)
    breaker._breakers.clear()  # what a fresh worker process has: nothing but Redis
    deliver_each(alice.customer, 2)
    assert fake.requests == 3
    assert breaker.states()[http] == "open"


def test_with_every_breaker_open_the_message_retries_without_calling_anyone(
    alice, settings, smtp_sink
):
    with FakeEsp("postmark") as first, FakeEsp("resend") as second:
        settings.MAILQ_PROVIDERS = [first.provider_url(), second.provider_url()]
        settings.MAILQ_BREAKER_FAIL_MAX = 1
        sending.close_providers()
        first.set_mode(ERROR)
        second.set_mode(ERROR)
        deliver_each(alice.customer, 1)
        assert set(breaker.states().values()) == {"open"}
        [message] = deliver_each(alice.customer, 1)
        assert message.status == Status.RETRYING
        assert "circuit open" in message.last_error
        assert (first.requests, second.requests) == (1, 1)
        assert not message.delivery_attempts.exists()
        sending.close_providers()


@pytest.fixture
def redis_down(settings) -> Iterator[None]:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    breaker._redis = None  # a client for the dead Redis (and fresh breakers) on first use
    yield
    breaker._redis = None


def test_without_redis_breakers_fail_open_and_redis_is_left_alone_for_a_while(
    alice, fake, smtp_sink, chain, redis_down, caplog
):
    http, smtp = chain
    fake.set_mode(ERROR)
    with caplog.at_level(logging.WARNING, logger="delivery.breaker"):
        messages = deliver_each(alice.customer, 5)
    assert {m.status for m in messages} == {Status.SENT}
    assert fake.requests == 5  # no breaker: every message tried the provider
    assert breaker._client().paused()
    assert len([r for r in caplog.records if "fail open" in r.message]) == 1
    assert breaker.states() == {http: "closed", smtp: "closed"}


def test_the_message_list_in_the_admin_shows_each_providers_breaker(
    admin_client, alice, fake, smtp_sink, chain
):
    http, smtp = chain
    fake.set_mode(ERROR)
    deliver_each(alice.customer, 3)
    page = admin_client.get("/admin/delivery/message/").content.decode()
    assert f"<td>{http}</td><td><strong>open</strong></td><td>3</td>" in page
    assert f"<td>{smtp}</td><td><strong>closed</strong></td><td>0</td><td></td>" in page


def test_a_healthy_provider_is_called_outside_the_breakers_lock(alice, fake, smtp_sink, chain):
    # The express pool runs threads: a send through a healthy breaker must not wait for
    # another thread's send (pybreaker holds its lock for the whole call it makes).
    http, _ = chain
    deliver_each(alice.customer, 1)  # reads the view: closed, no failures
    handle = breaker._breaker(http)
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with handle._lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(5)
    try:
        t0 = time.monotonic()
        [message] = deliver_each(alice.customer, 1)
        took = time.monotonic() - t0
    finally:
        release.set()
        holder.join()
    assert message.status == Status.SENT and message.provider == http
    assert took < 2, took
