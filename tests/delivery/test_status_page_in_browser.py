"""The status page in a real browser: its charts are drawn with data, on a laptop and a phone."""

from datetime import timedelta

import pytest
from django.utils import timezone

from delivery import stats, status_page
from delivery.models import MinuteRollup
from tests.browser import PHONE, screenshot

pytestmark = pytest.mark.browser


def _day_of_traffic(customer) -> None:
    """A rollup in each of the last 24 hours: mail sent at varying latency, some failed."""
    welcome = customer.templates.get(slug="welcome")
    now = timezone.now().replace(second=0, microsecond=0)
    rows = []
    for hours_ago in range(24):
        buckets = [0] * stats.BUCKETS
        sent = 200 + 40 * (hours_ago % 6)
        buckets[stats.bucket_of(0.08)] = sent - 20
        buckets[stats.bucket_of(0.6 + hours_ago / 10)] = 18
        buckets[stats.bucket_of(4 + hours_ago)] = 2
        rows.append(
            MinuteRollup(
                customer=customer,
                template=welcome,
                minute=now - timedelta(hours=hours_ago),
                sent=sent,
                failed=hours_ago % 4,
                dead=1 if hours_ago == 7 else 0,
                latency_sum=sent * 0.2,
                buckets=buckets,
            )
        )
    MinuteRollup.objects.bulk_create(rows)


def _drawn(page, selector: str) -> int:
    """How many elements matching `selector` the browser laid out with a non-zero size."""
    return page.eval_on_selector_all(
        selector,
        "els => els.filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; })"
        ".length",
    )


def test_the_status_page_draws_its_charts_with_data_on_a_laptop_and_a_phone(
    live_server, browser_page, alice, bob
):
    _day_of_traffic(alice.customer)
    page = browser_page
    page.goto(live_server.url + status_page.signed_link(alice.customer.pk, 600))
    page.wait_for_selector("svg")

    assert page.locator("h1").inner_text() == "alice: delivery status"
    assert page.locator("svg").count() == 2
    # The latency chart: three percentile lines over 24 points each.
    assert _drawn(page, "[data-chart='1'] svg path") == 3
    assert _drawn(page, "[data-chart='1'] svg circle") == 72
    # The volume chart: a bar of sent mail in every hour, failures stacked on some.
    assert _drawn(page, "[data-chart='2'] svg rect.sent") == 24
    assert _drawn(page, "[data-chart='2'] svg rect.failed") == 18
    screenshot(page, "status-page-desktop")

    page.set_viewport_size(PHONE)
    page.reload()
    page.wait_for_selector("svg")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing wider than the phone: no sideways scrolling
    box = page.locator("[data-chart='2'] svg").bounding_box()
    assert box is not None and 300 <= box["width"] <= PHONE["width"]
    assert _drawn(page, "[data-chart='2'] svg rect.sent") == 24
    screenshot(page, "status-page-phone")


def test_a_customer_reaches_its_page_by_pasting_its_api_key_then_picks_a_template(
    live_server, browser_page, alice
):
    _day_of_traffic(alice.customer)
    page = browser_page
    page.goto(f"{live_server.url}/status/")
    page.fill("#api_key", alice.key)
    page.click("button[type=submit]")
    page.wait_for_selector("svg")
    assert page.locator("h1").inner_text() == "alice: delivery status"
    assert alice.key not in page.url
    assert _drawn(page, "svg rect.sent") == 24

    page.select_option("#template", "welcome")
    page.click("form.filter button")
    page.wait_for_url("**template=welcome")
    assert page.locator("h1").inner_text() == "alice: delivery status of welcome"
    assert _drawn(page, "svg rect.sent") == 24
