import factory

from customers.models import Customer, Tier
from templates.models import EmailTemplate

TIER_DEFAULTS = {
    "free": dict(
        pool_weight=1,
        api_rate_per_second=5,
        api_burst=50,
        daily_quota=1_000,
        monthly_quota=10_000,
        inflight_cap=5,
    ),
    "standard": dict(
        pool_weight=2,
        api_rate_per_second=100,
        api_burst=2_000,
        daily_quota=200_000,
        monthly_quota=5_000_000,
        inflight_cap=20,
    ),
    "premium": dict(
        pool_weight=3,
        api_rate_per_second=2_000,
        api_burst=200_000,
        daily_quota=20_000_000,
        monthly_quota=500_000_000,
        inflight_cap=100,
    ),
}


def tier(name: str = "standard") -> Tier:
    """The seeded tier (recreated after transactional tests flush the tables)."""
    obj, _ = Tier.objects.get_or_create(
        name=name, defaults={"queue": f"mailq.{name}", **TIER_DEFAULTS[name]}
    )
    return obj


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer
        django_get_or_create = ["name"]

    name = factory.Sequence(lambda n: f"customer-{n}")
    tier = factory.LazyFunction(tier)


def template(
    customer: Customer,
    slug: str = "welcome",
    subject: str = "Hello {{ name }}",
    html: str = "<p>Hi {{ name }}</p>",
    text: str = "Hi {{ name }}",
) -> EmailTemplate:
    obj = EmailTemplate.objects.create(customer=customer, slug=slug)
    obj.add_version(subject, html, text)
    return obj


def accepted(
    customer: Customer,
    count: int = 1,
    template_slug: str = "welcome",
    data: dict | None = None,
    to: str = "ana@example.com",
    **fields,
) -> list:
    """Messages accepted through the real intake (published only if on_commit runs)."""
    from delivery.intake import SendRequest, accept_many

    requests = [
        SendRequest(template=template_slug, to=[to], data=data or {"name": f"N{i}"}, **fields)
        for i in range(count)
    ]
    return accept_many(customer, requests)
