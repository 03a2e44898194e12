"""The provider contract, run against every provider: SMTP against a real SMTP server, each
HTTP service (through anymail) against a real local HTTP server speaking its API."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from django.core.exceptions import ImproperlyConfigured

from delivery.providers import build_chain, from_url
from delivery.providers.anymail import ESPS
from delivery.providers.base import (
    Email,
    PermanentError,
    Provider,
    ProviderThrottled,
    ProviderTimeout,
    ProviderUnavailable,
    TemporaryError,
)
from tests.conftest import Sink, free_port
from tests.fake_esp import ERROR, INVALID, SLOW, THROTTLE, FakeEsp

TIMEOUT = 0.3  # the providers' timeout here; a slow server holds a request longer

# What each failure is, whatever the protocol.
FAILURES = {
    ERROR: TemporaryError,
    THROTTLE: ProviderThrottled,
    INVALID: PermanentError,
    SLOW: ProviderTimeout,
}


def email(n: int = 0, to: str = "ana@example.com") -> Email:
    return Email(
        message_id=f"<m{n}@mailq.localhost>",
        from_email="Acme <sender@example.com>",
        to=(to,),
        subject=f"Hello {n}",
        text=f"Hi {n}",
        html=f"<p>Hi {n}</p>",
        reply_to="help@example.com",
        headers={"X-Mailq-Message-Id": f"m{n}"},
    )


@dataclass
class Harness:
    """A provider URL, the server behind it, and how to make that server fail."""

    url: str
    received: Callable[[], list[dict[str, str]]]  # headers of each email taken, lower-cased
    fail: Callable[[str], None] | None  # None: this provider cannot fail (console)
    dead_url: str = ""  # the same provider pointed at a port nobody listens on
    secret: str = ""


def _smtp(sink: Sink) -> Harness:
    replies = {
        ERROR: "451 4.3.0 try again later",
        THROTTLE: "421 4.7.0 too many connections",
        INVALID: "550 5.1.1 no such user",
    }

    def fail(mode: str) -> None:
        if mode == SLOW:
            sink.delay = 1.0
        else:
            sink.refusals["ana@example.com"] = [replies[mode]] * 5

    return Harness(
        url=f"{sink.url}?timeout={TIMEOUT}",
        received=lambda: [{k.lower(): v for k, v in m.items()} for m in sink.received],
        fail=fail,
        dead_url=f"smtp://127.0.0.1:{free_port()}?timeout={TIMEOUT}",
    )


def _http(fake: FakeEsp) -> Harness:
    dead = f"http://127.0.0.1:{free_port()}/"
    return Harness(
        url=fake.provider_url(timeout=TIMEOUT),
        received=lambda: [r.headers for r in fake.received],
        fail=fake.set_mode,
        dead_url=fake.provider_url(timeout=TIMEOUT).replace(fake.base_url, dead),
        secret="secret" if fake.dialect_name == "ses" else "test-key",
    )


@pytest.fixture(params=["smtp", "console", *ESPS])
def harness(request, capsys) -> Iterator[Harness]:
    if request.param == "smtp":
        yield _smtp(request.getfixturevalue("smtp_sink"))
    elif request.param == "console":
        yield Harness("console://", lambda: _console_headers(capsys.readouterr().out), None)
    else:
        with FakeEsp(request.param) as fake:
            yield _http(fake)


def _console_headers(out: str) -> list[dict[str, str]]:
    mails = [block for block in out.split("-" * 72) if block.strip()]
    return [
        {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in m.splitlines()) if v}
        for m in mails
    ]


@pytest.fixture
def provider(harness) -> Iterator[Provider]:
    provider = from_url(harness.url)
    yield provider
    provider.close()


class TestProviderContract:
    def test_it_sends_with_the_stable_message_id_headers(self, harness, provider):
        result = provider.send(email(1))
        assert result.provider == provider.name
        [headers] = harness.received()
        assert headers["message-id"] == "<m1@mailq.localhost>"
        assert headers["x-mailq-message-id"] == "m1"

    def test_it_reuses_its_connection_for_the_next_message(self, harness, provider):
        for n in range(3):
            provider.send(email(n))
        assert [h["x-mailq-message-id"] for h in harness.received()] == ["m0", "m1", "m2"]

    def test_it_sends_again_after_close(self, harness, provider):
        provider.send(email(1))
        provider.close()
        provider.close()  # idempotent
        provider.send(email(2))
        assert len(harness.received()) == 2

    def test_its_name_carries_no_secret(self, harness, provider):
        assert provider.name.startswith(f"{provider.scheme}://")
        if harness.secret:
            assert harness.secret not in provider.name

    @pytest.mark.parametrize("mode", list(FAILURES))
    def test_failures_say_whether_to_retry(self, harness, provider, mode):
        if harness.fail is None:
            pytest.skip("this provider cannot fail")
        harness.fail(mode)
        with pytest.raises(FAILURES[mode]) as caught:
            provider.send(email(1))
        assert caught.value.permanent == (mode == INVALID)
        assert harness.received() == []

    def test_an_unreachable_server_is_unavailable(self, harness):
        if not harness.dead_url:
            pytest.skip("this provider has no server")
        provider = from_url(harness.dead_url)
        with pytest.raises(ProviderUnavailable) as caught:
            provider.send(email(1))
        assert not caught.value.permanent
        provider.close()


# --- HTTP specifics ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404])
def test_an_http_answer_about_our_account_is_temporary_not_the_messages_fault(status):
    """A wrong key or URL must fail over (and trip the breaker), not fail every message."""
    with FakeEsp("postmark") as fake:
        provider = from_url(fake.provider_url(timeout=TIMEOUT))
        fake.handle = lambda body, content_type: (status, {"ErrorCode": 10, "Message": "no"}, {})
        with pytest.raises(ProviderUnavailable):
            provider.send(email(1))
        provider.close()


@pytest.mark.parametrize(
    "error_code, expected", [(405, ProviderUnavailable), (300, PermanentError)]
)
def test_postmark_account_errors_are_temporary_and_message_errors_permanent(error_code, expected):
    """422 "out of credits" is about the account; 422 "invalid From" about the message."""
    with FakeEsp("postmark") as fake:
        provider = from_url(fake.provider_url(timeout=TIMEOUT))
        answer = (422, {"ErrorCode": error_code, "Message": "Invalid 'From' address"}, {})
        fake.handle = lambda body, content_type: answer
        with pytest.raises(expected):
            provider.send(email(1))
        provider.close()


def test_provider_urls_name_the_service_not_the_key():
    assert from_url("postmark://SECRET-TOKEN").name == "postmark://api.postmarkapp.com"
    assert from_url("sendgrid://SG.abc.def").name == "sendgrid://api.sendgrid.com"
    assert from_url("mailgun://key-1?sender_domain=mg.example.com").name == (
        "mailgun://api.mailgun.net"
    )
    assert from_url("ses://AKID:s%2Fcret@eu-west-1").name == "ses://email.eu-west-1.amazonaws.com"
    assert from_url("ses://us-east-1").name == "ses://email.us-east-1.amazonaws.com"
    chain = build_chain(["postmark://T", "smtp://relay.example.com:587"])
    assert [p.name for p in chain] == [
        "postmark://api.postmarkapp.com",
        "smtp://relay.example.com:587",
    ]


@pytest.mark.parametrize("url", ["postmark://", "ses://", "nosuch://x"])
def test_a_provider_url_without_what_it_needs_fails_loudly(url):
    with pytest.raises(ImproperlyConfigured):
        from_url(url)
