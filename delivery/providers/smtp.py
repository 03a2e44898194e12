"""SMTP provider: one connection per worker process, reused across messages.

Opening an SMTP session (TCP + banner + EHLO) costs more than sending a small message, so the
connection stays open; a connection the server closed while idle is reopened once, transparently.
"""

import contextlib
import smtplib
import ssl
from typing import ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import settings

from delivery.providers.base import (
    Email,
    PermanentError,
    ProviderError,
    ProviderThrottled,
    ProviderTimeout,
    ProviderUnavailable,
    SendResult,
    TemporaryError,
)
from delivery.providers.mime import envelope_address

THROTTLE_CODES = {421, 452}


def classify(code: int, detail: str) -> ProviderError:
    """SMTP reply code -> error. 4xx is temporary, 5xx permanent (RFC 5321 4.2.1)."""
    message = f"SMTP {code}: {detail}"
    if code in THROTTLE_CODES:
        return ProviderThrottled(message)
    if 400 <= code < 500:
        return TemporaryError(message)  # about this message; the server itself is fine
    if code >= 500:
        return PermanentError(message)
    return TemporaryError(message)


def _timed_out(exc: BaseException) -> bool:
    """smtplib reports a read that timed out as SMTPServerDisconnected; the cause tells."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


def _decode(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


class SmtpProvider:
    scheme: ClassVar[str] = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout
        self.name = f"smtp://{host}:{port}"
        self._conn: smtplib.SMTP | None = None

    @classmethod
    def from_url(cls, url: str) -> "SmtpProvider":
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 25,
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            starttls=query.get("starttls", ["0"])[0] in ("1", "true", "yes"),
            timeout=float(query.get("timeout", [settings.MAILQ_SMTP_TIMEOUT_SECONDS])[0]),
        )

    def _connect(self) -> smtplib.SMTP:
        try:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                conn.starttls(context=ssl.create_default_context())
            if self.username:
                conn.login(self.username, self.password)
        except smtplib.SMTPResponseException as exc:
            raise classify(exc.smtp_code, _decode(exc.smtp_error)) from exc
        except (OSError, smtplib.SMTPException) as exc:
            if _timed_out(exc):
                raise ProviderTimeout(f"{self.name}: connect timed out") from exc
            raise ProviderUnavailable(f"{self.name}: cannot connect: {exc}") from exc
        return conn

    def _send_once(self, email: Email) -> None:
        if self._conn is None:
            self._conn = self._connect()
        recipients = [envelope_address(address) for address in email.to]
        self._conn.sendmail(envelope_address(email.from_email), recipients, email.to_bytes())

    def send(self, email: Email) -> SendResult:
        try:
            try:
                self._send_once(email)
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                if _timed_out(exc):
                    raise TimeoutError from exc  # a slow server, not a closed connection
                # The server closed our idle connection: reopen once and try again.
                self.close()
                self._send_once(email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{rcpt}: {_decode(msg)}" for rcpt, (_, msg) in exc.recipients.items()
            )
            # Refused recipients leave the session usable; reset it for the next message.
            self._reset()
            raise classify(
                max(codes) if all(c >= 500 for c in codes) else min(codes), detail
            ) from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise classify(exc.smtp_code, _decode(exc.smtp_error)) from exc
        except TimeoutError as exc:
            self.close()
            raise ProviderTimeout(f"{self.name}: timed out") from exc
        except ProviderError:
            self.close()
            raise
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise ProviderUnavailable(f"{self.name}: {exc}") from exc
        return SendResult(provider=self.name, provider_message_id=email.message_id)

    def _reset(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rset()
        except (OSError, smtplib.SMTPException):
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._conn.quit()
            self._conn = None
