from django.core.management.base import BaseCommand, CommandError

from customers.models import Customer, Tier


class Command(BaseCommand):
    help = "Create a customer on a tier and print its new API key alone on the last line."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--tier", default="standard")

    def handle(self, *args, name: str, tier: str, **options) -> None:
        try:
            tier_obj = Tier.objects.get(name=tier)
        except Tier.DoesNotExist:
            known = ", ".join(Tier.objects.values_list("name", flat=True))
            raise CommandError(f"No tier {tier!r}; known tiers: {known}") from None
        if Customer.objects.filter(name=name).exists():
            raise CommandError(f"A customer named {name!r} already exists.")
        customer = Customer.objects.create(name=name, tier=tier_obj)
        _, raw = customer.issue_key(name="create_customer")
        self.stderr.write(f"Created customer {name!r} on tier {tier}. The key is shown once:")
        self.stdout.write(raw)
