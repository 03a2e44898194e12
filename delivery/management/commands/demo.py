import json
import shlex

from django.core.management.base import BaseCommand

from customers.models import Customer, Tier
from templates.models import EmailTemplate

SUBJECT = "Welcome to {{ product }}, {{ name }}!"
TEXT = "Hi {{ name }},\n\nYour account is ready: {{ url }}\n\n-- The {{ product }} team\n"
HTML = (
    "<h1>Welcome, {{ name }}!</h1>\n"
    '<p>Your account is ready: <a href="{{ url }}">{{ url }}</a></p>\n'
    "<p>&mdash; The {{ product }} team</p>\n"
)


class Command(BaseCommand):
    help = "Create the demo customer and its 'welcome' template (idempotent); print a new key."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, base_url: str, **options) -> None:
        customer, _ = Customer.objects.get_or_create(
            name="demo", defaults={"tier": Tier.objects.get(name="standard")}
        )
        template = EmailTemplate.objects.owned_by(customer).filter(slug="welcome").first()
        if template is None:
            template = EmailTemplate.objects.create(
                customer=customer, slug="welcome", name="Welcome"
            )
            template.add_version(SUBJECT, HTML, TEXT)
        _, key = customer.issue_key(name="make run")
        body = json.dumps(
            {
                "template": "welcome",
                "to": "ana@example.com",
                "data": {"name": "Ana", "product": "mailq", "url": "https://example.com/start"},
            }
        )
        curl = (
            f"curl -sS -X POST {base_url}/v1/messages "
            f"-H {shlex.quote('Authorization: Bearer ' + key)} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
        )
        self.stdout.write(f"Demo customer: demo (tier {customer.tier.name})")
        self.stdout.write(f"API key (shown once): {key}")
        self.stdout.write("Send a real email (it arrives in var/maildir/new/ via the SMTP sink):")
        self.stdout.write(f"  {curl}")
        self.stdout.write(
            f"Then: curl -sS {base_url}/v1/messages/<id> "
            f"-H {shlex.quote('Authorization: Bearer ' + key)}"
        )
