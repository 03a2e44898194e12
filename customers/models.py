"""Tiers, customers and their API keys.

An API key is shown once, at creation; only its SHA-256 is stored. The keys are 256-bit random
tokens, so a fast hash is enough (a slow password hash protects guessable secrets, not these)
and lookup stays one indexed query per request.
"""

import hashlib
import secrets
from datetime import timedelta

from django.db import models
from django.utils import timezone

from mailq import db

KEY_PREFIX = "mq_"
# last_used_at is written at most this often per key, so authentication is not a write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class Tier(models.Model):
    """A service level: its queue, worker-pool weight, API limits, quotas and in-flight cap."""

    name = models.SlugField(max_length=32, unique=True)
    queue = models.CharField(
        max_length=64, unique=True, help_text="RabbitMQ queue the tier's worker pool consumes."
    )
    pool_weight = models.PositiveIntegerField(
        default=1, help_text="Relative size of the tier's worker pool (worker processes)."
    )
    api_rate_per_second = models.PositiveIntegerField(help_text="Sustained messages per second.")
    api_burst = models.PositiveIntegerField(help_text="Messages admitted at once above the rate.")
    daily_quota = models.PositiveBigIntegerField()
    monthly_quota = models.PositiveBigIntegerField()
    inflight_cap = models.PositiveIntegerField(
        default=20,
        help_text="Messages of one customer that may sit in the broker or be sending at once.",
    )

    class Meta:
        ordering = ["pool_weight", "name"]

    def __str__(self) -> str:
        return self.name


class Customer(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    name = models.CharField(max_length=200, unique=True)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="customers")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    default_from = models.CharField(
        max_length=320, blank=True, help_text="Used when a send names no from address."
    )
    inflight_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Overrides the tier's in-flight cap for this customer (its fair-share weight).",
    )
    sending_paused = models.BooleanField(
        default=False,
        help_text="Paused: new and waiting messages stay deferred (nothing is lost) until resumed.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    # DRF treats request.user as a user object; an authenticated customer is one.
    is_authenticated = True

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def effective_inflight_cap(self) -> int:
        """How many messages of this customer may be in the broker or sending at once."""
        if self.sending_paused:
            return 0
        return self.inflight_cap if self.inflight_cap is not None else self.tier.inflight_cap

    def issue_key(self, name: str = "") -> tuple["ApiKey", str]:
        """Create a key and return it with its plaintext, which is never stored."""
        return ApiKey.objects.issue(self, name)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyManager(models.Manager["ApiKey"]):
    def issue(self, customer: Customer, name: str = "") -> tuple["ApiKey", str]:
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = self.create(customer=customer, name=name, prefix=raw[:12], hashed=hash_key(raw))
        return key, raw

    def for_key(self, raw: str) -> "ApiKey | None":
        """The key (active or revoked) matching a plaintext, with its customer and tier.

        Every API request makes this lookup: one joined query, no ORM compilation.
        """
        if not raw.startswith(KEY_PREFIX) or len(raw) > 100:
            return None
        row = db.fetch_one(
            f"""SELECT {db.columns(ApiKey, "k")}, {db.columns(Customer, "c")},
                       {db.columns(Tier, "t")}
                  FROM customers_apikey k
                  JOIN customers_customer c ON c.id = k.customer_id
                  JOIN customers_tier t ON t.id = c.tier_id
                 WHERE k.hashed = %s""",
            [hash_key(raw)],
        )
        if row is None:
            return None
        key, index = db.build(ApiKey, row, 0)
        customer, index = db.build(Customer, row, index)
        customer.tier, _ = db.build(Tier, row, index)
        key.customer = customer
        return key


class ApiKey(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="First characters, to recognise the key.")
    hashed = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyManager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.customer})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self) -> None:
        ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.refresh_from_db(fields=["revoked_at"])

    def touch(self) -> None:
        """Record use, at most once per LAST_USED_RESOLUTION."""
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now
