"""RabbitMQ restarts while mail is being accepted and sent: nothing accepted is lost, nothing is
sent twice. A private RabbitMQ node (tests/rabbitmq.py), never the shared one."""

import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connection

from delivery import sweeper
from delivery.models import Message, Status
from delivery.queues import ensure
from mailq.celery import app
from tests.conftest import TIER_QUEUES, wait_until
from tests.rabbitmq import SERVER, PrivateRabbitMQ

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SERVER is None, reason="rabbitmq-server is not installed"),
]


def _use_broker(url: str, queue_type: str) -> None:
    """Point this process's Celery app (the web side's publishes) at `url`, `queue_type`."""
    app.conf.broker_url = url
    app.conf.task_create_missing_queue_type = app.conf.task_default_queue_type = queue_type
    # Both pools are kombu's, keyed by connection: the next use opens one to `url`.
    app._pool = None
    app.amqp._producer_pool = None
    for cached in ("queues", "router", "default_queue"):  # declarations of the queue type
        app.amqp.__dict__.pop(cached, None)


@pytest.fixture(
    params=[("classic", False), ("quorum", False), ("classic", True)],
    ids=["classic", "quorum", "classic-kill-9"],
)
def private_broker(request, tmp_path, settings) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of this test's own, its queues of the type MAILQ_QUEUE_TYPE names;
    restarted gracefully, or killed with SIGKILL and started again."""
    node = PrivateRabbitMQ(tmp_path)
    node.queue_type, node.crash = request.param
    shared = (app.conf.broker_url, app.conf.task_create_missing_queue_type)
    try:
        node.start()
        settings.CELERY_BROKER_URL = node.url  # what start_worker hands to the worker
        _use_broker(node.url, node.queue_type)
        ensure(TIER_QUEUES)
        yield node
    finally:
        _use_broker(*shared)
        node.stop()


class Sender(threading.Thread):
    """Accepts one message every `interval` through the API, as a client app would."""

    def __init__(self, client, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.client, self.interval = client, interval
        self.ids: list[str] = []
        self.refused: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                response = self.client.post(
                    "/v1/messages",
                    {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana"}},
                    format="json",
                )
                if response.status_code == 202:
                    self.ids.append(response.json()["id"])
                else:
                    self.refused.append(response.status_code)
                time.sleep(self.interval)
        finally:
            connection.close()  # this thread's own database connection

    def stop(self) -> list[str]:
        self.done.set()
        self.join(10)
        return self.ids


def test_rabbitmq_restarted_while_accepting_and_sending_loses_nothing_and_sends_nothing_twice(
    alice, private_broker, start_worker, smtp_sink, settings
):
    settings.MAILQ_SWEEP_UNPUBLISHED_AFTER_SECONDS = 1
    smtp_sink.delay = 0.02  # about as slow as the sender: tasks are running when it goes
    worker = start_worker(concurrency=2, MAILQ_QUEUE_TYPE=private_broker.queue_type)
    sender = Sender(alice.client)
    sender.start()
    try:
        assert wait_until(lambda: len(smtp_sink.received) >= 30, timeout=20)
        started = time.monotonic()
        private_broker.restart(crash=private_broker.crash)  # then start on the same data
        restarted_in = time.monotonic() - started
        time.sleep(1)  # accept and send a little more after it is back
    finally:
        ids = sender.stop()
    smtp_sink.delay = 0
    begun = time.monotonic()
    assert sender.refused == []  # the API kept answering 202 while the broker was away
    types = private_broker.queue_types()
    assert {types[name] for name in TIER_QUEUES} == {private_broker.queue_type}, types
    waiting = Message.objects.filter(published_at__isnull=True).count()

    # What was accepted while the broker was away waits in PostgreSQL; the sweeper (beat
    # runs it every 2 s) republishes it once the broker is back.
    def all_sent() -> bool:
        sweeper.sweep()
        return Message.objects.filter(status=Status.SENT).count() == len(ids)

    done = wait_until(all_sent, timeout=40, interval=0.5)
    accepted = list(Message.objects.filter(id__in=ids))
    line = smtp_sink.report(accepted)
    print(
        f"broker down and back in {restarted_in:.1f} s; {waiting} messages were unpublished; "
        f"all sent {time.monotonic() - begun:.1f} s after"
    )
    print("".join(line for line in worker.output if "WARNING" in line or "ERROR" in line)[-4000:])
    assert done, (line, list(Message.objects.exclude(status=Status.SENT).values_list("status")))
    assert len(accepted) == len(ids) > 30
    assert smtp_sink.tally(accepted) == (len(ids), len(ids), 0), line
    assert not wait_until(lambda: len(smtp_sink.received) > len(ids), timeout=1)
