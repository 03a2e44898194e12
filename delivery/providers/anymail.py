"""HTTP email services (Postmark, SendGrid, Mailgun, Amazon SES, Resend, SparkPost) through
django-anymail's backends, one class for all of them.

URL forms (the secret is the URL's user part or host, percent-encoded if it holds `/`, `@`, `:`):

    postmark://SERVER_TOKEN      sendgrid://API_KEY      mailgun://API_KEY
    resend://API_KEY             sparkpost://API_KEY
    ses://ACCESS_KEY_ID:SECRET_ACCESS_KEY@REGION   or   ses://REGION (boto3 finds credentials)

Query options: `api_url` (HTTP services; `endpoint_url` for SES) points the provider at another
base URL (an EU region, or a local fake in tests); `timeout` (seconds, default
MAILQ_HTTP_TIMEOUT_SECONDS); `sender_domain` (Mailgun). The provider's `name` is the scheme and
the API host, never the secret.

Anymail keeps one HTTP session (or boto3 client) per backend, so connections are reused across
messages as the SMTP provider reuses its session. Nothing here retries: botocore's own retries
are turned off, and requests does not retry by default.
"""

import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests
from anymail.exceptions import (
    AnymailError,
    AnymailInvalidAddress,
    AnymailNotSupportedWarning,
    AnymailRecipientsRefused,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives, get_connection

from delivery.providers.base import (
    Email,
    PermanentError,
    ProviderError,
    ProviderThrottled,
    ProviderTimeout,
    ProviderUnavailable,
    SendResult,
)


@dataclass(frozen=True)
class Esp:
    backend: str  # anymail's backend, for get_connection
    secret: str  # the backend setting that holds the URL's secret
    api_url: str  # the default base URL (for the provider's name)


ESPS: dict[str, Esp] = {
    "postmark": Esp(
        "anymail.backends.postmark.EmailBackend", "server_token", "https://api.postmarkapp.com/"
    ),
    "sendgrid": Esp(
        "anymail.backends.sendgrid.EmailBackend", "api_key", "https://api.sendgrid.com/v3/"
    ),
    "mailgun": Esp(
        "anymail.backends.mailgun.EmailBackend", "api_key", "https://api.mailgun.net/v3"
    ),
    "resend": Esp("anymail.backends.resend.EmailBackend", "api_key", "https://api.resend.com/"),
    "sparkpost": Esp(
        "anymail.backends.sparkpost.EmailBackend", "api_key", "https://api.sparkpost.com/api/v1/"
    ),
    "ses": Esp("anymail.backends.amazon_ses.EmailBackend", "", ""),
}

# HTTP statuses that say "this provider cannot take mail from us now", not "this message is
# bad": a wrong key or URL must fail over (and trip the breaker), never fail every message.
_UNAVAILABLE_STATUSES = {401, 403, 404}
# Amazon SES error codes that mean the same whatever their HTTP status.
_SES_THROTTLED = {"Throttling", "ThrottlingException", "TooManyRequestsException"}
_SES_UNAVAILABLE = {"SendingPausedException", "AccountSuspendedException"}
# Postmark answers 422 for most things, with an ErrorCode; these are about the account (bad
# token, out of credits, pending approval). A bad sender signature stays permanent: it is the
# From address of that message, and must not trip the breaker for everyone.
_POSTMARK_ACCOUNT_CODES = {10, 405, 412}


def _http_status(exc: AnymailError) -> tuple[int | None, str | int]:
    """The HTTP status of the provider's answer and its error code (SES, Postmark)."""
    if exc.status_code is not None:
        try:
            code = exc.response.json().get("ErrorCode", "")
        except (ValueError, AttributeError):
            code = ""
        return exc.status_code, code
    response = exc.response  # botocore's ClientError leaves its parsed answer here
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata", {})
        return meta.get("HTTPStatusCode"), response.get("Error", {}).get("Code", "")
    return None, ""


def _is_timeout(cause: BaseException | None) -> bool:
    return isinstance(cause, requests.Timeout | ReadTimeoutError | ConnectTimeoutError)


def classify(exc: AnymailError) -> ProviderError:
    """An anymail error -> a ProviderError that says whether to retry.

    Permanent: every recipient refused, an invalid address, content the provider or anymail
    cannot take (other 4xx). Temporary: timeouts, connection failures, 5xx, 429, and 401/403/404
    (our credentials or URL, not the message).
    """
    # anymail's text spans lines (the provider's JSON answer, pretty-printed): keep it, on one.
    message = " ".join(str(exc).split())[:500] or type(exc).__name__
    if isinstance(exc, AnymailRecipientsRefused | AnymailInvalidAddress):
        return PermanentError(message)
    if isinstance(exc, AnymailUnsupportedFeature | AnymailSerializationError):
        return PermanentError(message)
    cause = exc.__cause__
    if _is_timeout(cause):
        return ProviderTimeout("timed out")
    status, code = _http_status(exc)
    if status == 429 or code in _SES_THROTTLED:
        return ProviderThrottled(message)
    if status == 408:
        return ProviderTimeout(message)
    if status is None or status in _UNAVAILABLE_STATUSES or code in _SES_UNAVAILABLE:
        # No answer (connection refused or lost), or one about our account, not this message.
        return ProviderUnavailable(message)
    if exc.esp_name == "Postmark" and code in _POSTMARK_ACCOUNT_CODES:
        return ProviderUnavailable(message)
    if 400 <= status < 500:
        return PermanentError(message)
    return ProviderUnavailable(message)  # 5xx, or a 2xx/3xx anymail could not read


def _first(query: dict[str, list[str]], key: str) -> str:
    return query.get(key, [""])[0]


class AnymailProvider:
    """One HTTP email service, chosen by the URL's scheme (see ESPS)."""

    def __init__(self, scheme: str, name: str, backend_path: str, options: dict[str, Any]) -> None:
        self.scheme = scheme
        self.name = name
        with warnings.catch_warnings():
            # anymail still ships and documents its SendGrid backend but no longer tests it
            # against SendGrid (docs/providers.md says so); the warning would repeat per process.
            warnings.simplefilter("ignore", AnymailNotSupportedWarning)
            self._backend = get_connection(backend_path, fail_silently=False, **options)
        # Opened once and kept: send_messages() then leaves the session (and its pooled
        # keep-alive connections) open between messages.
        self._open = False

    @classmethod
    def from_url(cls, url: str) -> "AnymailProvider":
        parts = urlsplit(url)
        esp = ESPS.get(parts.scheme)
        if esp is None:
            raise ImproperlyConfigured(f"Not an anymail provider: {parts.scheme!r}")
        query = parse_qs(parts.query)
        timeout = float(_first(query, "timeout") or settings.MAILQ_HTTP_TIMEOUT_SECONDS)
        if parts.scheme == "ses":
            return cls._ses(parts, query, timeout)
        secret = unquote(parts.netloc)
        if not secret:
            raise ImproperlyConfigured(f"{parts.scheme}:// needs its API key: {parts.scheme}://KEY")
        api_url = _first(query, "api_url") or esp.api_url
        options: dict[str, Any] = {esp.secret: secret, "api_url": api_url, "timeout": timeout}
        if parts.scheme == "mailgun" and _first(query, "sender_domain"):
            options["sender_domain"] = _first(query, "sender_domain")
        api = urlsplit(api_url)
        return cls(parts.scheme, f"{parts.scheme}://{api.netloc}", esp.backend, options)

    @classmethod
    def _ses(cls, parts, query: dict[str, list[str]], timeout: float) -> "AnymailProvider":
        region = parts.hostname or _first(query, "region")
        if not region:
            raise ImproperlyConfigured("ses:// needs a region: ses://KEY_ID:SECRET@us-east-1")
        session: dict[str, str] = {"region_name": region}
        if parts.username:
            session["aws_access_key_id"] = unquote(parts.username)
            session["aws_secret_access_key"] = unquote(parts.password or "")
        endpoint = _first(query, "endpoint_url")
        client: dict[str, Any] = {
            # One attempt: retrying is sending.py's job (and failing over is the breaker's).
            "config": {
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "retries": {"total_max_attempts": 1},
            }
        }
        if endpoint:
            client["endpoint_url"] = endpoint
        host = urlsplit(endpoint).netloc if endpoint else f"email.{region}.amazonaws.com"
        options = {"session_params": session, "client_params": client}
        return cls("ses", f"ses://{host}", ESPS["ses"].backend, options)

    def _message(self, email: Email) -> EmailMultiAlternatives:
        # The stable Message-ID lets a receiver deduplicate a resend through another provider.
        headers = {"Message-ID": email.message_id, **email.headers}
        body, html_only = (email.text, False) if email.text else (email.html, True)
        message = EmailMultiAlternatives(
            subject=email.subject,
            body=body,
            from_email=email.from_email,
            to=list(email.to),
            reply_to=[email.reply_to] if email.reply_to else None,
            headers=headers,
            connection=self._backend,
        )
        if html_only:
            message.content_subtype = "html"
        elif email.html:
            message.attach_alternative(email.html, "text/html")
        return message

    def send(self, email: Email) -> SendResult:
        message = self._message(email)
        try:
            if not self._open:
                self._backend.open()
                self._open = True
            sent = self._backend.send_messages([message])
        except AnymailError as exc:
            raise classify(exc) from exc
        except (requests.RequestException, OSError) as exc:  # raised outside anymail's wrapper
            raise ProviderUnavailable(str(exc)) from exc
        if not sent:
            raise PermanentError("nothing to send (no recipients)")
        status = message.anymail_status
        return SendResult(provider=self.name, provider_message_id=str(status.message_id or ""))

    def close(self) -> None:
        if self._open:
            self._backend.close()
            self._open = False
