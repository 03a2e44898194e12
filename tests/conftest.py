"""Fixtures against the real services: PostgreSQL, RabbitMQ (vhost mailq_test), Redis (db 1).

Named customers: alice and bob (standard tier), charlie (premium). `smtp_sink` is a real SMTP
server on a free loopback port; `worker` is a real Celery worker process.
"""

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message as MimeMessage

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from rest_framework.test import APIClient

from customers.models import Customer
from delivery import sending
from delivery.queues import ensure
from delivery.smtp_sink import SinkHandler, start
from mailq.celery import app
from tests.factories import CustomerFactory, queue, template, tier
from tests.processes import ChildProcess

pytest_plugins = ["tests.browser"]

TIER_QUEUES = [
    *(
        queue(name, express)
        for name in ("free", "standard", "premium")
        for express in (False, True)
    ),
    django_settings.MAILQ_MAINTENANCE_QUEUE,
]


def wait_until(
    predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05
) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class Account:
    customer: Customer
    key: str
    client: APIClient


def _account(name: str, tier_name: str) -> Account:
    customer = CustomerFactory(name=name, tier=tier(tier_name))
    _, key = customer.issue_key()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    template(customer)
    return Account(customer, key, client)


@pytest.fixture
def alice(db) -> Account:
    return _account("alice", "standard")


@pytest.fixture
def bob(db) -> Account:
    return _account("bob", "standard")


@pytest.fixture
def charlie(db) -> Account:
    return _account("charlie", "premium")


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()
    yield


# --- SMTP ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sink:
    """A real SMTP server that keeps mail in memory and can refuse on purpose."""

    host: str
    port: int
    received: list[MimeMessage] = field(default_factory=list)
    # recipient -> SMTP replies to give, in order, before accepting (e.g. ["451 4.3.0 busy"])
    refusals: dict[str, list[str]] = field(default_factory=dict)
    # seconds each message takes to accept: a slow server, so a test can act mid-batch
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def store(self, email: MimeMessage, envelope) -> None:
        with self.lock:
            self.received.append(email)

    def reply_for(self, envelope) -> str | None:
        if self.delay:
            time.sleep(self.delay)  # blocks the sink's event loop: it serves one client anyway
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                replies = self.refusals.get(rcpt)
                if replies:
                    return replies.pop(0)
        return None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[MimeMessage]:
        wait_until(lambda: len(self.received) >= count, timeout)
        return list(self.received)

    def by_message_id(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for email in self.received:
            counts[email["X-Mailq-Message-Id"]] = counts.get(email["X-Mailq-Message-Id"], 0) + 1
        return counts

    def tally(self, accepted: list) -> tuple[int, int, int]:
        """(accepted, sent: distinct accepted messages received, duplicates: extra copies)."""
        counts = self.by_message_id()
        ids = {str(m.id) for m in accepted}
        sent = sum(1 for message_id in counts if message_id in ids)
        return len(ids), sent, sum(n - 1 for n in counts.values())

    def report(self, accepted: list) -> str:
        """The fault-injection tests' line: "accepted N, sent N, duplicates 0"."""
        total, sent, duplicates = self.tally(accepted)
        line = f"accepted {total}, sent {sent}, duplicates {duplicates}"
        print(line)
        return line


@pytest.fixture
def smtp_sink() -> Iterator[Sink]:
    sink = Sink("127.0.0.1", free_port())
    controller = start(SinkHandler(sink.store, sink.reply_for), sink.host, sink.port)
    yield sink
    controller.stop()


@pytest.fixture
def providers(settings, smtp_sink) -> Iterator[Sink]:
    """Point this process's provider chain at the test sink."""
    settings.MAILQ_PROVIDERS = [smtp_sink.url]
    sending.close_providers()
    yield smtp_sink
    sending.close_providers()


# --- broker and workers ---------------------------------------------------------------------


def _declare_test_queues(purge: bool) -> None:
    """Declare this run's queues exactly as Celery does (queues.ensure), optionally purged."""
    ensure(TIER_QUEUES)
    if purge:
        with app.connection_for_write() as conn:
            for name in TIER_QUEUES:
                conn.channel().queue_purge(name)


@pytest.fixture(scope="session", autouse=True)
def _test_queues() -> Iterator[None]:
    _declare_test_queues(purge=True)
    yield
    with app.connection_for_write() as conn:
        for name in TIER_QUEUES:  # this run's queues are named for it alone
            conn.channel().queue_delete(name)


@pytest.fixture
def broker() -> Iterator[None]:
    """Empty the test vhost's queues before and after the test."""
    _declare_test_queues(purge=True)
    yield
    _declare_test_queues(purge=True)


def test_database_url() -> str:
    db = django_settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


test_database_url.__test__ = False  # not a test, despite the name


class WorkerProcess(ChildProcess):
    """A real `celery worker` process on the test vhost and the test database."""

    def __init__(
        self, env: dict[str, str], queues: list[str], concurrency: int, pool: str = "prefork"
    ) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "mailq", "worker", "-Q", ",".join(queues)]
        argv += ["-c", str(concurrency), "--pool", pool, "--without-gossip", "--without-mingle"]
        argv += ["--loglevel", "INFO", "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"]
        super().__init__(argv, env, marker=" ready.")
        if not self.ready.wait(60):
            self.stop()
            raise RuntimeError("worker did not start:\n" + self.tail())


@pytest.fixture
def start_worker(
    request, transactional_db, broker, smtp_sink
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes that deliver to `smtp_sink`. Stopped after the test."""
    started: list[WorkerProcess] = []
    request.node._mailq_workers = started

    def _start(
        queues: list[str] | None = None,
        concurrency: int = 2,
        pool: str = "prefork",
        **extra_env: str,
    ):
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": test_database_url(),
            "MAILQ_TEST_BROKER_URL": django_settings.CELERY_BROKER_URL,
            "MAILQ_TEST_PROVIDERS": smtp_sink.url,
            **extra_env,
        }
        worker = WorkerProcess(env, queues or TIER_QUEUES, concurrency, pool)
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    return start_worker()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the output of the test's worker processes to the report."""
    report = yield
    if report.failed and call.when == "call":
        workers = getattr(item, "_mailq_workers", [])
        for worker in workers:
            report.sections.append(("worker output", "".join(worker.output[-80:])))
    return report
