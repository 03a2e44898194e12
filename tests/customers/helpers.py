"""Small request helpers shared by the throttling, quota and abuse tests."""

from customers import quotas
from customers.models import Customer

WELCOME = {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana"}}


def send(client, body=None, **extra):
    return client.post("/v1/messages", body or WELCOME, format="json", **extra)


def batch(client, count: int, invalid: int = 0, **extra):
    """A batch of `count` valid items followed by `invalid` items naming no template."""
    items = [{**WELCOME, "to": f"user{i}@example.com"} for i in range(count)]
    items += [{**WELCOME, "template": "nope"} for _ in range(invalid)]
    return client.post("/v1/messages/batch", {"messages": items}, format="json", **extra)


def limit(account, **overrides) -> None:
    """Override the account's customer limits (they apply from its next request)."""
    Customer.objects.filter(pk=account.customer.pk).update(**overrides)
    account.customer.refresh_from_db()


def usage(account) -> dict:
    response = account.client.get("/v1/usage")
    assert response.status_code == 200, response.content
    return response.json()


def used(account) -> tuple[int, int]:
    """The account's exact usage (day, month) from PostgreSQL, without spending a request."""
    day, month = quotas.usage(account.customer)
    return day.used, month.used
