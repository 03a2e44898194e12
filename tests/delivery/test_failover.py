"""Fault injection: a real worker process sends through Postmark (a local server speaking its
API) first and the SMTP sink second. Postmark answers 500s, then hangs past the timeout, then
recovers; the breaker opens, mail fails over to SMTP, nothing is lost or sent twice, and the
breaker closes again once Postmark is back."""

import time

import pytest

from delivery import breaker
from delivery.models import Message, Status
from delivery.providers import from_url
from tests.conftest import wait_until
from tests.delivery.test_end_to_end import post_json
from tests.fake_esp import ERROR, OK, SLOW, FakeEsp

pytestmark = pytest.mark.e2e

RESET_SECONDS = 2


def send(live_server, key: str, count: int, start: int) -> list[str]:
    ids = []
    for n in range(start, start + count):
        status, body = post_json(
            f"{live_server.url}/v1/messages",
            key,
            {"template": "welcome", "to": f"user{n}@example.com", "data": {"name": f"U{n}"}},
        )
        assert status == 202
        ids.append(body["id"])
    return ids


def all_sent(ids: list[str]) -> bool:
    return Message.objects.filter(pk__in=ids, status=Status.SENT).count() == len(ids)


def test_a_failing_provider_opens_its_breaker_mail_fails_over_and_it_closes_on_recovery(
    live_server, alice, smtp_sink, start_worker
):
    with FakeEsp("postmark", delay=3.0) as fake:
        url = fake.provider_url(timeout=0.5)
        http = from_url(url).name
        start_worker(
            MAILQ_TEST_PROVIDERS=f"{url},{smtp_sink.url}",
            MAILQ_BREAKER_FAIL_MAX="3",
            MAILQ_BREAKER_RESET_SECONDS=str(RESET_SECONDS),
        )
        # 1. 500s: the first three sends fail over one by one, then the breaker opens.
        fake.set_mode(ERROR)
        ids = send(live_server, alice.key, 30, 0)
        assert wait_until(lambda: all_sent(ids), timeout=20)
        assert breaker.states([http]) == {http: "open"}
        failed_requests = fake.requests
        assert 3 <= failed_requests <= 5  # two worker processes may race past the third

        # 2. Timeouts: after the cool-down one probe hangs, times out, and re-opens it.
        fake.set_mode(SLOW)
        time.sleep(RESET_SECONDS + 1.5)
        ids += send(live_server, alice.key, 10, 30)
        assert wait_until(lambda: all_sent(ids), timeout=20)
        assert breaker.states([http]) == {http: "open"}
        assert 1 <= fake.requests - failed_requests <= 2  # the probes, not one per message
        assert fake.received == []

        # 3. Recovery: the next probe succeeds, the breaker closes, mail flows through HTTP.
        fake.set_mode(OK)
        time.sleep(RESET_SECONDS + 1.5)
        ids += send(live_server, alice.key, 10, 40)
        assert wait_until(lambda: all_sent(ids), timeout=20)
        assert breaker.states([http]) == {http: "closed"}
        assert Message.objects.get(pk=ids[-1]).provider == http

        counts: dict[str, int] = {}
        for source in (smtp_sink.by_message_id(), fake.by_message_id()):
            for message_id, n in source.items():
                counts[message_id] = counts.get(message_id, 0) + n
        duplicates = sum(n - 1 for n in counts.values())
        print(
            f"accepted {len(ids)}, sent {len(counts)}, duplicates {duplicates}"
            f" (smtp {len(smtp_sink.received)}, http {len(fake.received)})"
        )
        assert set(counts) == set(ids)
        assert duplicates == 0
        assert len(fake.received) >= 10 - 2  # after recovery, HTTP takes the mail again
