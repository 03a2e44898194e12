import factory
from django.conf import settings

from customers.models import Customer, Tier
from customers.seed import DEFAULT_TIERS
from delivery.queues import express_queue
from templates.models import EmailTemplate


def tier(name: str = "standard") -> Tier:
    """The seeded tier (recreated after transactional tests flush the tables), with this test
    run's queue name (tests/settings.py: QUEUE_PREFIX)."""
    values = {**DEFAULT_TIERS[name], "queue": queue(name)}
    obj, created = Tier.objects.get_or_create(name=name, defaults=values)
    if not created and obj.queue != values["queue"]:
        obj.queue = values["queue"]
        obj.save(update_fields=["queue"])
    return obj


def queue(tier_name: str, express: bool = False) -> str:
    """This test run's name of a tier's queue (or of its express lane)."""
    name = f"{settings.QUEUE_PREFIX}mailq.{tier_name}"
    return express_queue(name) if express else name


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
