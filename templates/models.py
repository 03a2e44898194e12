"""Customer-authored email templates. Every change is a new immutable TemplateVersion.

Messages point at the version they were accepted with, so editing a template never changes
mail already accepted, and workers can cache rendered-template code by version id forever.
"""

from django.db import models, transaction
from django.utils import timezone

from customers.models import Customer
from mailq import db


class EmailTemplateQuerySet(models.QuerySet["EmailTemplate"]):
    def live(self) -> "EmailTemplateQuerySet":
        return self.filter(deleted_at__isnull=True)

    def owned_by(self, customer: Customer) -> "EmailTemplateQuerySet":
        return self.live().filter(customer=customer)

    def current_version(self, customer: Customer, slug: str) -> "TemplateVersion | None":
        """The version a send uses now. On every send's path: one query, no ORM compilation."""
        row = db.fetch_one(
            f"""SELECT {db.columns(TemplateVersion, "v")}
                  FROM email_templates_emailtemplate t
                  JOIN email_templates_templateversion v ON v.id = t.current_version_id
                 WHERE t.customer_id = %s AND t.slug = %s AND t.deleted_at IS NULL""",
            [customer.pk, slug],
        )
        return db.build(TemplateVersion, row, 0)[0] if row else None


class EmailTemplate(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="templates")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200, blank=True)
    current_version = models.ForeignKey(
        "TemplateVersion", on_delete=models.PROTECT, null=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # Soft delete: accepted messages may still need the versions to render.
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = EmailTemplateQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "slug"],
                condition=models.Q(deleted_at__isnull=True),
                name="unique_live_template_slug",
            )
        ]

    def __str__(self) -> str:
        return f"{self.customer}/{self.slug}"

    @transaction.atomic
    def add_version(self, subject: str, html: str, text: str) -> "TemplateVersion":
        """Store new content as the next version and make it current."""
        # Lock the template row so two concurrent edits get distinct version numbers.
        locked = EmailTemplate.objects.select_for_update().get(pk=self.pk)
        last = locked.versions.order_by("-number").values_list("number", flat=True).first() or 0
        version = TemplateVersion.objects.create(
            template=self, number=last + 1, subject=subject, html=html, text=text
        )
        self.current_version = version
        self.updated_at = timezone.now()
        self.save(update_fields=["current_version", "updated_at"])
        return version

    def soft_delete(self) -> None:
        self.deleted_at = timezone.now()
        self.save(update_fields=["deleted_at"])


class TemplateVersion(models.Model):
    template = models.ForeignKey(EmailTemplate, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    subject = models.CharField(max_length=998)
    html = models.TextField(blank=True)
    text = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="unique_version_number")
        ]

    def __str__(self) -> str:
        return f"{self.template} v{self.number}"
