"""A real local HTTP server that speaks enough of an email service's send API for tests and
benchmarks: each dialect parses that service's request and answers in its shapes (success,
invalid recipient, 429, 500), and `mode` makes it fail on purpose. Loopback only.

Only mail the server answered with success is kept in `received`: a request it failed or
held past the client's timeout was not accepted (as a real provider that fails before
accepting), so counting `received` plus the SMTP sink finds duplicates and losses exactly.
"""

import base64
import email
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message as MimeMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

OK, ERROR, THROTTLE, INVALID, SLOW = "ok", "error", "throttle", "invalid", "slow"


@dataclass
class Received:
    to: list[str]
    subject: str
    headers: dict[str, str]  # lower-cased names

    @property
    def mailq_id(self) -> str:
        return self.headers.get("x-mailq-message-id", "")


Answer = tuple[int, dict, dict[str, str]]  # status, JSON body, extra headers


@dataclass(frozen=True)
class Dialect:
    path: str  # the send endpoint's path, relative to the fake's root
    parse: Callable[[bytes, str], Received]
    success: Callable[[Received], Answer]
    invalid: Callable[[Received], Answer]
    error: Answer
    throttle: Answer


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _postmark(body: bytes, content_type: str) -> Received:
    data = json.loads(body)
    headers = {h["Name"]: h["Value"] for h in data.get("Headers", [])}
    return Received(data["To"].split(", "), data["Subject"], _lower(headers))


def _sendgrid(body: bytes, content_type: str) -> Received:
    data = json.loads(body)
    to = [r["email"] for p in data["personalizations"] for r in p["to"]]
    return Received(to, data["subject"], _lower(data.get("headers", {})))


def _mailgun(body: bytes, content_type: str) -> Received:
    form = parse_qs(body.decode())
    headers = {k[2:]: v[0] for k, v in form.items() if k.startswith("h:")}
    return Received(form["to"], form["subject"][0], _lower(headers))


def _resend(body: bytes, content_type: str) -> Received:
    data = json.loads(body)
    return Received(data["to"], data["subject"], _lower(data.get("headers", {})))


def _sparkpost(body: bytes, content_type: str) -> Received:
    data = json.loads(body)
    to = [r["address"]["email"] for r in data["recipients"]]
    content = data["content"]
    return Received(to, content["subject"], _lower(content.get("headers", {})))


def _ses(body: bytes, content_type: str) -> Received:
    data = json.loads(body)
    raw: MimeMessage = email.message_from_bytes(base64.b64decode(data["Content"]["Raw"]["Data"]))
    headers = {k.lower(): str(v) for k, v in raw.items()}
    return Received(data["Destination"]["ToAddresses"], raw["Subject"], headers)


def _id() -> str:
    return str(uuid.uuid4())


DIALECTS: dict[str, Dialect] = {
    "postmark": Dialect(
        "/email",
        _postmark,
        lambda r: (
            200,
            {
                "To": ", ".join(r.to),
                "SubmittedAt": "2026-01-01T00:00:00Z",
                "MessageID": _id(),
                "ErrorCode": 0,
                "Message": "OK",
            },
            {},
        ),
        lambda r: (422, {"ErrorCode": 300, "Message": f"Invalid 'To' address: '{r.to[0]}'."}, {}),
        (500, {"ErrorCode": 100, "Message": "Internal server error"}, {}),
        (429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, {}),
    ),
    "sendgrid": Dialect(
        "/mail/send",
        _sendgrid,
        lambda r: (202, {}, {"X-Message-Id": _id()}),
        lambda r: (
            400,
            {
                "errors": [
                    {
                        "message": "Does not contain a valid address.",
                        "field": "personalizations.0.to.0.email",
                    }
                ]
            },
            {},
        ),
        (500, {"errors": [{"message": "Internal server error"}]}, {}),
        (429, {"errors": [{"message": "too many requests"}]}, {}),
    ),
    "mailgun": Dialect(
        "/messages",  # {api_url}{sender domain}/messages
        _mailgun,
        lambda r: (200, {"id": f"<{_id()}@example.com>", "message": "Queued. Thank you."}, {}),
        lambda r: (400, {"message": "'to' parameter is not a valid address."}, {}),
        (500, {"message": "Internal Server Error"}, {}),
        (429, {"message": "Too many requests"}, {}),
    ),
    "resend": Dialect(
        "/emails",
        _resend,
        lambda r: (200, {"id": _id()}, {}),
        lambda r: (
            422,
            {"statusCode": 422, "name": "validation_error", "message": "Invalid `to` field."},
            {},
        ),
        (500, {"statusCode": 500, "name": "internal_server_error", "message": "oops"}, {}),
        (429, {"statusCode": 429, "name": "rate_limit_exceeded", "message": "slow down"}, {}),
    ),
    "sparkpost": Dialect(
        "/transmissions/",
        _sparkpost,
        lambda r: (
            200,
            {
                "results": {
                    "total_rejected_recipients": 0,
                    "total_accepted_recipients": len(r.to),
                    "id": _id(),
                }
            },
            {},
        ),
        lambda r: (422, {"errors": [{"message": "Invalid recipient address", "code": "5002"}]}, {}),
        (500, {"errors": [{"message": "Internal server error"}]}, {}),
        (429, {"errors": [{"message": "Too many requests"}]}, {}),
    ),
    "ses": Dialect(
        "/v2/email/outbound-emails",
        _ses,
        lambda r: (200, {"MessageId": _id()}, {}),
        lambda r: (400, {"message": "Illegal address"}, {"x-amzn-ErrorType": "MessageRejected"}),
        (500, {"message": "Internal failure"}, {"x-amzn-ErrorType": "InternalFailure"}),
        (
            429,
            {"message": "Maximum sending rate exceeded."},
            {"x-amzn-ErrorType": "TooManyRequestsException"},
        ),
    ),
}


@dataclass
class FakeEsp:
    """`with FakeEsp("postmark") as fake:` serves on a free loopback port until the block ends."""

    dialect_name: str
    mode: str = OK
    delay: float = 2.0  # SLOW: hold the request this long, then answer 500
    received: list[Received] = field(default_factory=list)
    requests: int = 0  # every send request, whatever the answer
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.dialect_name]

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def provider_url(self, timeout: float = 2.0) -> str:
        """The MAILQ_PROVIDERS entry that points this service's provider at the fake."""
        if self.dialect_name == "ses":
            return f"ses://AKIDTEST:secret@us-east-1?endpoint_url={self.base_url}&timeout={timeout}"
        return f"{self.dialect_name}://test-key?api_url={self.base_url}&timeout={timeout}"

    def start(self) -> "FakeEsp":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real services
            # One write per answer, sent at once: headers and body in separate small writes
            # meet the client's delayed ACK and cost 40 ms per request on a kept-alive link.
            wbufsize = 64 * 1024
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.split("?")[0].endswith(fake.dialect.path):
                    self._answer(404, {"message": f"no route {self.path}"}, {})
                    return
                self._answer(*fake.handle(body, self.headers.get("Content-Type", "")))

            def _answer(self, status: int, payload: dict, headers: dict[str, str]) -> None:
                raw = json.dumps(payload).encode() if payload else b""
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up (a timeout on purpose)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def handle(self, body: bytes, content_type: str) -> Answer:
        received = self.dialect.parse(body, content_type)
        with self.lock:
            self.requests += 1
            mode = self.mode
        if mode == SLOW:
            self._stopping.wait(self.delay)  # the client times out first
            return self.dialect.error
        if mode == ERROR:
            return self.dialect.error
        if mode == THROTTLE:
            return self.dialect.throttle
        if mode == INVALID:
            return self.dialect.invalid(received)
        with self.lock:
            self.received.append(received)
        return self.dialect.success(received)

    def set_mode(self, mode: str) -> None:
        with self.lock:
            self.mode = mode

    def by_message_id(self) -> dict[str, int]:
        with self.lock:
            counts: dict[str, int] = {}
            for r in self.received:
                counts[r.mailq_id] = counts.get(r.mailq_id, 0) + 1
            return counts

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < count:
            time.sleep(0.05)
        return len(self.received) >= count

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeEsp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
