"""The MIME writer produces messages that a standard parser reads back exactly."""

from email import message_from_bytes
from email.policy import default

import pytest

from delivery.providers.base import Email
from delivery.providers.mime import envelope_address


def parse(email: Email):
    # On the wire lines end in CRLF; a receiving MTA stores them as local newlines.
    return message_from_bytes(email.to_bytes().replace(b"\r\n", b"\n"), policy=default)


def make(**overrides) -> Email:
    fields = dict(
        message_id="<0b9c@mailq.test>",
        from_email="mailq <no-reply@mailq.test>",
        to=("ana@example.com",),
        subject="Hello",
        text="Hi Ana",
        html="<p>Hi Ana</p>",
    )
    return Email(**(fields | overrides))


def test_a_two_part_message_round_trips():
    parsed = parse(make(reply_to="help@mailq.test", headers={"X-Mailq-Message-Id": "0b9c"}))
    assert parsed["Message-ID"] == "<0b9c@mailq.test>"
    assert parsed["From"] == "mailq <no-reply@mailq.test>"
    assert parsed["Reply-To"] == "help@mailq.test"
    assert parsed["X-Mailq-Message-Id"] == "0b9c"
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)).get_content() == "Hi Ana"
    assert parsed.get_body(("html",)).get_content() == "<p>Hi Ana</p>"


@pytest.mark.parametrize("text", ["only text", ""])
def test_a_single_part_message_round_trips(text):
    parsed = parse(make(text=text, html="" if text else "<b>only html</b>"))
    assert not parsed.is_multipart()
    assert parsed.get_content().rstrip("\r\n") == (text or "<b>only html</b>")


def test_non_ascii_headers_and_bodies_are_encoded_and_decoded():
    parsed = parse(
        make(
            from_email="Zoë Café <zoe@example.com>",
            to=("juergen@bücher.example",),
            subject="Grüße — ünïcödé " * 8,
            text="Ça va? " * 40 + "\n= equals\n.dot line",
            html="<p>日本語</p>",
        )
    )
    assert parsed["Subject"] == "Grüße — ünïcödé " * 8
    assert parsed["From"].addresses[0].display_name == "Zoë Café"
    assert parsed["To"] == "juergen@xn--bcher-kva.example"
    assert parsed.get_body(("plain",)).get_content() == "Ça va? " * 40 + "\n= equals\n.dot line"
    assert parsed.get_body(("html",)).get_content() == "<p>日本語</p>"


def test_lines_are_crlf_and_never_over_998_octets():
    raw = make(text="x" * 5000, html="y" * 5000).to_bytes()
    lines = raw.split(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in lines) <= 998


def test_the_envelope_address_is_the_bare_mailbox():
    assert envelope_address("Ana <ana@example.com>") == "ana@example.com"
    assert envelope_address("ana@example.com") == "ana@example.com"
    assert envelope_address("Zoë <zoe@bücher.example>") == "zoe@xn--bcher-kva.example"
