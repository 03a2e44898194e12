"""The operator dashboard in the admin: per-tier figures, top backlogs, staff only, and a fixed
number of queries however many customers there are."""

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from delivery.models import Message, Status
from tests.factories import CustomerFactory, accepted, template, tier

DASHBOARD = "/admin/dashboard/"
PANEL = "/admin/dashboard/panel"


def backlogged_customers(count: int, tier_name: str = "free") -> None:
    for _ in range(count):
        customer = CustomerFactory(tier=tier(tier_name))
        template(customer)
        ids = [m.pk for m in accepted(customer, 2)]
        Message.objects.filter(pk__in=ids).update(
            status=Status.DEFERRED, accepted_at=timezone.now() - timedelta(seconds=30)
        )


def test_the_admin_index_links_to_the_dashboard(admin_client):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert f'href="{DASHBOARD}"' in response.content.decode()


def test_the_dashboard_shows_every_tier_and_the_top_backlogs(admin_client, alice, charlie):
    tier("free")
    backlogged_customers(2, "free")
    page = admin_client.get(DASHBOARD)
    assert page.status_code == 200
    html = page.content.decode()
    for name in ("free", "standard", "premium"):
        assert f'data-tier="{name}"' in html
    assert "Top customers by backlog" in html
    assert html.count("/admin/customers/customer/") >= 2  # links to the backlogged customers
    assert 'src="/static/delivery/dashboard.js"' in html
    panel = admin_client.get(PANEL)
    assert panel.status_code == 200
    assert 'data-tier="premium"' in panel.content.decode()
    assert "<html" not in panel.content.decode()  # the panel alone, for the refresh


def test_the_dashboard_is_for_staff_only(client, db):
    assert client.get(DASHBOARD).status_code == 302  # to the admin login
    refused = client.get(PANEL)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


def test_the_panel_makes_as_many_queries_for_30_customers_as_for_3(admin_client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(PANEL).status_code == 200
        return len(captured)

    backlogged_customers(3)
    few = queries()
    backlogged_customers(27)
    assert queries() == few
