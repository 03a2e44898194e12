"""Metrics across real processes: gunicorn with 2 workers and a Celery prefork pool, in
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), as the Procfile runs them."""

import os
import signal
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from delivery import metrics
from delivery.models import Message, Status
from tests.conftest import free_port, test_database_url, wait_until
from tests.delivery.scrape import parse, total
from tests.factories import accepted
from tests.processes import ChildProcess

pytestmark = pytest.mark.e2e

HEALTHZ = {"endpoint": "/healthz", "method": "GET", "status": "200"}


def pids_with_files(directory: Path, kind: str) -> set[str]:
    """The processes that wrote `kind` (counter, histogram) values there."""
    return {p.stem.split("_")[-1] for p in directory.glob(f"{kind}_*.db")}


class Gunicorn:
    """`gunicorn mailq.wsgi` as the Procfile starts it, on a free loopback port."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "gunicorn", "-c", "python:mailq.gunicorn_conf"]
        argv += ["mailq.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers)]
        argv += ["--worker-class", "gthread", "--threads", "1"]
        self.process = ChildProcess(argv, env)
        if not wait_until(self._healthy, timeout=30, interval=0.2):
            self.stop()
            raise RuntimeError("gunicorn did not start:\n" + self.process.tail(40))

    def _healthy(self) -> bool:
        try:
            return self.get("/healthz") == 200
        except OSError:
            return False

    def get(self, path: str) -> int:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            response.read()
            return response.status

    def scrape(self) -> dict:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return parse(response.read().decode())

    def workers(self) -> list[int]:
        return self.process.children()

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def multiproc_dir(tmp_path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@pytest.fixture
def gunicorn(transactional_db, multiproc_dir):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": test_database_url(),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
    }
    server = Gunicorn(env, workers=2)
    yield server
    server.stop()


def hit(server: Gunicorn, count: int) -> None:
    """`count` requests from 8 clients at once, so both single-threaded workers take some."""
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: server.get("/healthz"), range(count))) == {200}


def test_two_gunicorn_workers_counts_add_up_and_survive_a_worker_exit(gunicorn, multiproc_dir):
    before = total(gunicorn.scrape(), "mailq_http_requests_total", **HEALTHZ)
    sent = 0
    # Both workers must have served: keep sending (bounded) until both wrote counters.
    for _ in range(10):
        hit(gunicorn, 100)
        sent += 100
        if len(pids_with_files(multiproc_dir, "counter")) >= 2:
            break
    assert len(pids_with_files(multiproc_dir, "counter")) >= 2, "one worker took everything"
    samples = gunicorn.scrape()
    assert total(samples, "mailq_http_requests_total", **HEALTHZ) - before == sent
    assert total(samples, "mailq_http_request_duration_seconds_count", endpoint="/healthz") == (
        total(samples, "mailq_http_requests_total", endpoint="/healthz")
    )

    # A worker that exits (and its replacement) loses nothing already counted.
    victim = gunicorn.workers()[0]
    os.kill(victim, signal.SIGTERM)
    assert wait_until(lambda: victim not in gunicorn.workers() and len(gunicorn.workers()) == 2)
    assert wait_until(gunicorn._healthy)
    hit(gunicorn, 50)
    sent += 50 + 1  # and the health check just above
    samples = gunicorn.scrape()
    assert total(samples, "mailq_http_requests_total", **HEALTHZ) - before == sent


def test_a_prefork_worker_pool_adds_one_latency_observation_per_sent_message_per_tier(
    start_worker, alice, charlie, multiproc_dir, monkeypatch
):
    worker = start_worker(concurrency=2, PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    # This process reads the pool's files as /metrics would with the variable set.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))
    before = parse(metrics.exposition().decode())
    assert total(before, "mailq_accept_to_sent_seconds_count") == 0

    ids = [m.pk for m in accepted(alice.customer, 40) + accepted(charlie.customer, 15)]
    assert wait_until(
        lambda: Message.objects.filter(pk__in=ids, status=Status.SENT).count() == 55, 30
    )

    def latency_count(tier: str) -> float:
        samples = parse(metrics.exposition().decode())
        return total(samples, "mailq_accept_to_sent_seconds_count", tier=tier)

    assert wait_until(lambda: latency_count("standard") == 40 and latency_count("premium") == 15)
    assert pids_with_files(multiproc_dir, "histogram") - {str(worker.proc.pid)}  # pool children
    assert metrics.delivered_totals() == {"standard": 40, "premium": 15}

    worker.stop()  # warm shutdown: pool processes exit, their counts stay
    assert latency_count("standard") == 40 and latency_count("premium") == 15
