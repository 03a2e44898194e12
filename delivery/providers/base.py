"""The provider contract: one small class per way of handing an email to someone else.

A provider turns an `Email` into a `SendResult` or raises a `ProviderError`. It writes nothing
to the database and has no retry policy: the caller (sending.py) owns both.

Errors say whether to retry::

    ProviderError(message, permanent)
    ├── TemporaryError           retry later, or fail over to the next provider (SMTP 4xx)
    │   ├── ProviderTimeout      no answer in time (the message may or may not have gone)
    │   ├── ProviderUnavailable  cannot connect, connection lost, 5xx from an HTTP API
    │   └── ProviderThrottled    the provider asked us to slow down (HTTP 429, SMTP 421/452)
    └── PermanentError           do not retry: bad address, content rejected (SMTP 5xx)
"""

from dataclasses import dataclass, field
from typing import Protocol

from delivery.providers import mime


@dataclass(frozen=True, slots=True)
class Email:
    """A fully rendered email, ready for any provider."""

    message_id: str  # stable per mailq message: receivers can deduplicate a resend
    from_email: str
    to: tuple[str, ...]
    subject: str
    text: str
    html: str
    reply_to: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The RFC 5322 message, as sent over SMTP."""
        return mime.to_bytes(
            message_id=self.message_id,
            from_email=self.from_email,
            to=self.to,
            subject=self.subject,
            text=self.text,
            html=self.html,
            reply_to=self.reply_to,
            headers=self.headers,
        )


@dataclass(frozen=True, slots=True)
class SendResult:
    provider: str
    provider_message_id: str = ""


class ProviderError(Exception):
    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class TemporaryError(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class ProviderTimeout(TemporaryError):
    pass


class ProviderUnavailable(TemporaryError):
    pass


class ProviderThrottled(TemporaryError):
    pass


class PermanentError(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class Provider(Protocol):
    """What every provider implements."""

    scheme: str  # the URL scheme it is built from
    name: str  # shown on attempts and messages and keys its circuit breaker; never a secret

    @classmethod
    def from_url(cls, url: str) -> "Provider": ...

    def send(self, email: Email) -> SendResult: ...

    def close(self) -> None: ...
