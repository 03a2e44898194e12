"""What operators look at, in a real browser: the delivery dashboard in the admin, and Flower
with the tier worker pools (real processes, started and stopped here)."""

import base64
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings as django_settings

from delivery.models import Message, Status
from tests.browser import DESKTOP, screenshot
from tests.conftest import free_port, test_database_url, wait_until
from tests.factories import accepted, queue, tier
from tests.processes import ChildProcess

pytestmark = pytest.mark.browser

TIERS = ("free", "standard", "premium")
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"


def test_the_admin_dashboard_shows_every_tier_and_refreshes_itself(
    live_server, browser_page, transactional_db, django_user_model, alice, settings
):
    settings.MAILQ_DASHBOARD_REFRESH_SECONDS = 1
    for name in TIERS:
        tier(name)
    # alice has a backlog, so the dashboard has a customer to list.
    Message.objects.filter(pk__in=[m.pk for m in accepted(alice.customer, 3)]).update(
        status=Status.DEFERRED
    )
    django_user_model.objects.create_superuser("operator", "op@example.com", "op-password-1")

    page = browser_page
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "op-password-1")
    page.click("input[type=submit]")
    page.click("text=Delivery dashboard")  # linked from the admin index

    page.wait_for_selector("#mailq-tiers tr[data-tier]")
    shown = page.locator("#mailq-tiers tbody th[scope=row]").all_inner_texts()
    assert shown == list(TIERS)  # the tiers, in pool-weight order
    assert "alice" in page.locator("#mailq-backlogs").inner_text()
    # The panel refreshes in place: the status line changes and throughput becomes a rate.
    page.wait_for_function(
        "document.getElementById('mailq-refresh-status').textContent.startsWith('Refreshed at')"
    )
    rates = "[...document.querySelectorAll('.mailq-throughput')]"
    page.wait_for_function(f"{rates}.every(cell => cell.textContent.endsWith('/s'))")
    screenshot(page, "admin-dashboard")


# --- Flower ------------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[Callable[..., ChildProcess]]:
    started: list[ChildProcess] = []

    def start(argv: list[str], env: dict[str, str], marker: str | None = None) -> ChildProcess:
        started.append(ChildProcess(argv, env, marker))
        return started[-1]

    yield start
    for process in started:  # all at once: each shuts down in parallel with the others
        process.terminate()
    for process in started:
        process.wait()


def _flower_get(url: str) -> int:
    credentials = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {credentials}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_flower_lists_the_tier_workers_and_shows_each_tasks_message_and_customer(
    browser, processes, transactional_db, broker, smtp_sink, alice
):
    for name in TIERS:
        tier(name)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": test_database_url(),
        "MAILQ_TEST_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "MAILQ_TEST_PROVIDERS": smtp_sink.url,
        "MAILQ_TASK_EVENTS": "1",
    }
    # The Procfile's worker processes (one process each, to spare the machine), as it runs them.
    pools = [*TIERS, "express"]
    workers = [
        processes(
            [sys.executable, "manage.py", "run_worker", pool, "--concurrency", "1"],
            env,
            marker=" ready.",
        )
        for pool in pools
    ]
    # Started beside the workers, as honcho does: run_flower waits for the pools to answer.
    port = free_port()
    flower = f"http://127.0.0.1:{port}"
    flower_process = processes(
        [
            *(sys.executable, "manage.py", "run_flower", "--wait=60", f"--pools={','.join(pools)}"),
            *("--", "--address=127.0.0.1", f"--port={port}"),
            f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}",
            "--broker-api=http://guest:guest@127.0.0.1:15672/api/",
        ],
        env,
    )
    for worker in workers:
        assert worker.ready.wait(60), "".join(worker.output[-40:])
    assert wait_until(lambda: _flower_get(flower + "/healthcheck") == 200, 45), "".join(
        flower_process.output[-40:]
    )
    assert _flower_get(flower + "/workers") == 200
    # Basic auth is on: without credentials Flower refuses.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(flower + "/workers", timeout=5)
    assert refused.value.code == 401

    context = browser.new_context(
        viewport=DESKTOP,
        http_credentials={"username": FLOWER_USER, "password": FLOWER_PASSWORD},
    )
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)

        def listed() -> list[str]:
            page.goto(f"{flower}/workers")
            page.wait_for_selector("#workers-table")
            return page.locator("#workers-table tbody tr td:first-child").all_inner_texts()

        # Workers appear once Flower has heard from them (heartbeats every 2 s).
        assert wait_until(
            lambda: {name.split("@")[0] for name in listed()} >= set(pools), 30, 1.0
        ), listed()
        screenshot(page, "flower-workers")

        # A message sent now shows in Flower with its id and its customer.
        message = accepted(alice.customer, 1)[0]
        assert smtp_sink.wait_for(1)
        page.goto(f"{flower}/tasks")
        row = page.locator("#tasks-table tbody tr", has_text=str(message.id))
        row.first.wait_for()
        assert f"'customer': {alice.customer.pk}" in row.first.inner_text()
        screenshot(page, "flower-tasks")

        # The broker tab reads RabbitMQ's management API: the tier queues with their counts.
        # It lists the queues the workers reported: Flower asks them in the background once it
        # has started (the pages above may come first on a fast machine), and again on Refresh.
        def broker_lists_the_tier_queue() -> bool:
            page.goto(f"{flower}/broker")
            page.wait_for_selector("#queue-table")
            if queue("standard") in page.locator("#queue-table").inner_text():
                return True
            _flower_get(flower + "/api/workers?refresh=1")  # the Workers page's Refresh
            return False

        assert wait_until(broker_lists_the_tier_queue, 30, 1.0), page.locator(
            "#queue-table"
        ).inner_text()
        screenshot(page, "flower-broker")
    finally:
        context.close()
