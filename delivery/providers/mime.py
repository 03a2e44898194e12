"""Serialise an Email to RFC 5322 bytes, fast.

The stdlib's EmailMessage (policy.default) parses every header it is given and costs ~3 ms per
message here, more than everything else on the send path together; the compat32 MIME classes
still cost ~1 ms. A transactional email has a fixed shape (a few headers, a text and/or an
HTML part), so it is written directly: quoted-printable bodies (binascii, in C), headers
passed through when they are short ASCII, RFC 2047-encoded by the stdlib otherwise.
"""

import binascii
from email.header import Header
from email.utils import formataddr, formatdate, getaddresses

CRLF = "\r\n"
_MAX_PLAIN_HEADER = 76


def _is_plain(value: str) -> bool:
    return value.isascii() and len(value) <= _MAX_PLAIN_HEADER


def encode_header(value: str) -> str:
    """An unstructured header value (Subject): RFC 2047 only when it must."""
    if _is_plain(value):
        return value
    return Header(value, "utf-8", maxlinelen=_MAX_PLAIN_HEADER).encode(linesep=CRLF)


def ascii_address(address: str) -> str:
    """An internationalised domain in its IDNA form. The API accepts only ASCII local parts
    (Django's validator), so the result is plain ASCII, as SMTP without SMTPUTF8 needs."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.encode('idna').decode('ascii')}"


def encode_addresses(value: str) -> str:
    """One or more mailboxes, display names encoded when they are not ASCII."""
    if value.isascii():
        return value
    return ", ".join(
        formataddr((name, ascii_address(address)), charset="utf-8")
        for name, address in getaddresses([value])
    )


def envelope_address(value: str) -> str:
    """The bare ASCII address of a mailbox ("Ana <ana@x>" -> "ana@x"), for MAIL FROM/RCPT TO."""
    return ascii_address(getaddresses([value])[0][1] if "<" in value else value)


def _qp(text: str) -> bytes:
    normalised = text.replace("\r\n", "\n").encode()
    return binascii.b2a_qp(normalised, istext=True).replace(b"\n", b"\r\n")


def _part(subtype: str, body: str) -> bytes:
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
    )
    return head.encode() + _qp(body)


def to_bytes(
    *,
    message_id: str,
    from_email: str,
    to: tuple[str, ...],
    subject: str,
    text: str,
    html: str,
    reply_to: str = "",
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [
        f"Message-ID: {message_id}",
        f"Date: {formatdate(localtime=False)}",
        f"From: {encode_addresses(from_email)}",
        f"To: {', '.join(encode_addresses(address) for address in to)}",
    ]
    if reply_to:
        lines.append(f"Reply-To: {encode_addresses(reply_to)}")
    lines.append(f"Subject: {encode_header(subject)}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {encode_header(value)}")
    lines.append("MIME-Version: 1.0")

    if text and html:
        # The message id is unique and never appears in a quoted-printable body (no "=_").
        boundary = f"=_mailq_{message_id.strip('<>').split('@')[0]}"
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        delimiter = f"{CRLF}--{boundary}{CRLF}".encode()
        body = (
            delimiter
            + _part("plain", text)
            + delimiter
            + _part("html", html)
            + f"{CRLF}--{boundary}--{CRLF}".encode()
        )
        return (CRLF.join(lines) + CRLF).encode() + body
    subtype, content = ("html", html) if html else ("plain", text)
    return (CRLF.join(lines) + CRLF).encode() + _part(subtype, content)
