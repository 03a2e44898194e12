"""The customer's status page: reached by a signed link or by pasting an API key, never
showing another customer's figures, charts drawn server-side."""

import re
import time
from datetime import timedelta

import pytest
from django.core import signing
from django.utils import timezone

from delivery import charts, stats, status_page
from delivery.models import MinuteRollup
from tests.factories import template


def _rollup(customer, minutes_ago: int, sent: int, failed: int = 0, seconds: float = 0.3):
    buckets = [0] * stats.BUCKETS
    buckets[stats.bucket_of(seconds)] = sent
    MinuteRollup.objects.create(
        customer=customer,
        template=customer.templates.get(slug="welcome"),
        minute=timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago),
        sent=sent,
        failed=failed,
        latency_sum=sent * seconds,
        buckets=buckets,
    )


def test_a_signed_link_opens_the_customers_own_page_with_charts(client, alice, bob):
    _rollup(alice.customer, 5, sent=40, failed=2, seconds=0.3)
    _rollup(alice.customer, 300, sent=7, seconds=12)
    _rollup(bob.customer, 5, sent=999_999)

    response = client.get(status_page.signed_link(alice.customer.pk, 60))
    assert response.status_code == 200
    html = response.content.decode()
    assert "alice: delivery status" in html
    assert "999999" not in html and "bob" not in html
    assert html.count("<svg") == 2
    assert len(re.findall(r'<rect class="sent"', html)) == 2  # two hours with mail sent
    assert len(re.findall(r'<circle class="p50"', html)) == 2
    assert response["Cache-Control"] == "private, no-store"
    assert "script" not in response["Content-Security-Policy"]
    assert "<script" not in html


@pytest.mark.parametrize("problem", ["expired", "tampered", "garbage"])
def test_an_expired_or_altered_link_shows_nothing(client, alice, bob, problem):
    _rollup(alice.customer, 5, sent=40)
    if problem == "expired":
        link = status_page.signed_link(alice.customer.pk, -1)
    elif problem == "tampered":
        token = signing.dumps({"c": bob.customer.pk, "u": int(time.time()) + 60}, salt="other")
        link = f"/status/{token}"
    else:
        link = "/status/not-a-token"
    response = client.get(link)
    assert response.status_code == 403
    assert "not valid or has expired" in response.content.decode()


def test_pasting_an_api_key_redirects_to_a_short_lived_link(client, alice, settings):
    page = client.get("/status/")
    assert page.status_code == 200 and 'type="password"' in page.content.decode()
    response = client.post("/status/", {"api_key": alice.key})
    assert response.status_code == 303
    link = response["Location"]
    assert alice.key not in link and link.startswith("/status/")
    claim = signing.loads(link.removeprefix("/status/"), salt="mailq.status-page")
    assert claim["c"] == alice.customer.pk
    assert claim["u"] - time.time() == pytest.approx(settings.MAILQ_STATUS_KEY_LINK_SECONDS, abs=5)
    assert "alice: delivery status" in client.get(link).content.decode()


def test_a_wrong_or_revoked_key_is_refused_and_counts_against_the_ip(client, alice, settings):
    settings.MAILQ_AUTH_FAILURE_RATE = "2/m"
    alice.customer.api_keys.get().revoke()
    for key in (alice.key, "mq_nope"):
        response = client.post("/status/", {"api_key": key})
        assert response.status_code == 401
        assert "not valid" in response.content.decode()
    assert client.post("/status/", {"api_key": "mq_nope"}).status_code == 429  # over 2/m
    # Locked out: even a right key is refused now, as the API refuses it.
    _, fresh = alice.customer.issue_key()
    response = client.post("/status/", {"api_key": fresh})
    assert response.status_code == 429


def test_the_key_form_needs_a_csrf_token():
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/status/", {"api_key": "mq_x"})
    assert response.status_code == 403


def test_the_page_says_so_when_nothing_finished(client, alice):
    html = client.get(status_page.signed_link(alice.customer.pk, 60)).content.decode()
    assert html.count("No messages finished in the last 24 hours.") == 2
    assert "<svg" not in html


def test_the_admin_action_makes_a_link_to_the_customers_page(admin_client, alice):
    template(alice.customer, slug="other")
    response = admin_client.post(
        "/admin/customers/customer/",
        {"action": "status_page_link", "_selected_action": [alice.customer.pk]},
        follow=True,
    )
    [link] = re.findall(r"http://testserver(/status/[^\s<\"]+)", response.content.decode())
    assert "alice: delivery status" in admin_client.get(link).content.decode()


# --- the chart geometry -----------------------------------------------------------------------


def _hours(*figures: stats.Figures):
    start = timezone.now().replace(minute=0, second=0, microsecond=0)
    return [(start + timedelta(hours=i), f) for i, f in enumerate(figures)]


def _figures(sent: int, seconds: float, failed: int = 0) -> stats.Figures:
    f = stats.Figures()
    f.counts["sent"], f.counts["failed"] = sent, failed
    f.buckets[stats.bucket_of(seconds)] = sent
    return f


def test_the_latency_chart_puts_slower_hours_higher_on_a_log_axis_and_breaks_at_gaps():
    chart = charts.latency_chart(
        _hours(_figures(10, 0.03), _figures(10, 3.0), stats.Figures(), _figures(5, 0.3))
    )
    p50 = next(s for s in chart.series if s.name == "p50")
    ys = [p.y for p in p50.points]
    assert len(ys) == 3 and ys[1] < ys[2] < ys[0]  # SVG y grows downwards
    assert len(p50.paths) == 1  # hours 0-1 joined; hour 3 alone after the gap
    assert [t.label for t in chart.y_ticks] == ["10 ms", "100 ms", "1 s", "10 s"]
    assert all(chart.top <= y <= chart.bottom for y in ys)


def test_the_volume_chart_stacks_statuses_to_scale():
    chart = charts.volume_chart(_hours(_figures(30, 1, failed=10), _figures(80, 1)))
    sent0, failed0, sent1 = chart.bars
    assert (sent0.css, failed0.css, sent1.css) == ("sent", "failed", "sent")
    assert failed0.y + failed0.height == pytest.approx(sent0.y)  # stacked on top
    assert sent1.height == pytest.approx(2 * (sent0.height + failed0.height), rel=0.02)
    assert chart.y_ticks[-1].label == "80" and chart.y_ticks[0].label == "0"


def test_the_page_narrows_to_one_template_and_says_when_it_does_not_know_it(client, alice):
    invoice = template(alice.customer, slug="invoice")
    _rollup(alice.customer, 5, sent=40)
    MinuteRollup.objects.create(
        customer=alice.customer,
        template=invoice,
        minute=timezone.now().replace(second=0, microsecond=0),
        sent=3,
        buckets=[3] + [0] * (stats.BUCKETS - 1),
    )
    link = status_page.signed_link(alice.customer.pk, 60)
    html = client.get(link + "?template=invoice").content.decode()
    assert "delivery status of <code>invoice</code>" in html
    assert '<option value="invoice" selected>' in html
    assert "<td>3</td>" in html and "<td>43</td>" not in html
    html = client.get(link + "?template=nope").content.decode()
    assert "No template “nope”" in html and "<td>43</td>" in html
