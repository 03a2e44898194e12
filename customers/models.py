"""Tiers, customers, their API keys and their daily usage.

An API key is shown once, at creation; only its SHA-256 is stored. The keys are 256-bit random
tokens, so a fast hash is enough (a slow password hash protects guessable secrets, not these)
and lookup stays one indexed query per request.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import date, timedelta

from django.core.validators import MinValueValidator
from django.db import connection, models
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
    api_rate_per_second = models.PositiveIntegerField(
        validators=[MinValueValidator(1)],
        help_text="Sustained messages per second (the burst allowance refills at this rate).",
    )
    api_burst = models.PositiveIntegerField(
        validators=[MinValueValidator(1)],
        help_text="Burst allowance: messages admitted at once when unused (the largest batch too).",
    )
    daily_quota = models.PositiveBigIntegerField(help_text="Messages per UTC day.")
    monthly_quota = models.PositiveBigIntegerField(help_text="Messages per UTC calendar month.")
    inflight_cap = models.PositiveIntegerField(
        default=20,
        help_text="Messages of one customer that may sit in the broker or be sending at once.",
    )

    class Meta:
        ordering = ["pool_weight", "name"]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Limits:
    """A customer's effective API limits: its own overrides, else its tier's."""

    rate_per_second: int
    burst: int
    daily_quota: int
    monthly_quota: int


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
    # API limits: empty means the tier's value (see `limits`).
    api_rate_per_second = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Overrides the tier's."
    )
    api_burst = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Overrides the tier's."
    )
    daily_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Overrides the tier's."
    )
    monthly_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Overrides the tier's."
    )
    # Abuse detection (customers/abuse.py): a flag is a note for an operator; a suspension
    # refuses every API call with 403 until an operator reinstates the customer.
    flagged_at = models.DateTimeField(null=True, blank=True)
    flag_reason = models.CharField(max_length=300, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.CharField(max_length=300, blank=True)
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

    @property
    def limits(self) -> Limits:
        """Rate, burst and quotas in force: each the customer's override, else the tier's."""
        tier = self.tier

        def pick(own: int | None, default: int) -> int:
            return own if own is not None else default

        return Limits(
            rate_per_second=max(pick(self.api_rate_per_second, tier.api_rate_per_second), 1),
            burst=max(pick(self.api_burst, tier.api_burst), 1),
            daily_quota=pick(self.daily_quota, tier.daily_quota),
            monthly_quota=pick(self.monthly_quota, tier.monthly_quota),
        )

    def flag(self, reason: str) -> bool:
        """Mark the customer for an operator's attention; False if it was flagged already."""
        now = timezone.now()
        flagged = Customer.objects.filter(pk=self.pk, flagged_at__isnull=True).update(
            flagged_at=now, flag_reason=reason[:300]
        )
        if flagged:
            self.flagged_at, self.flag_reason = now, reason[:300]
        return bool(flagged)

    def suspend(self, reason: str) -> bool:
        """Refuse the customer's API calls from now on; False if it was suspended already.

        A conditional UPDATE, so two web processes crossing a threshold together suspend once.
        """
        now = timezone.now()
        suspended = Customer.objects.filter(pk=self.pk, status=self.Status.ACTIVE).update(
            status=self.Status.SUSPENDED, suspended_at=now, suspension_reason=reason[:300]
        )
        if suspended:
            self.status, self.suspended_at = self.Status.SUSPENDED, now
            self.suspension_reason = reason[:300]
        return bool(suspended)

    def reinstate(self) -> None:
        """Lift a suspension and clear the flag (the operator has looked)."""
        Customer.objects.filter(pk=self.pk).update(
            status=self.Status.ACTIVE,
            suspended_at=None,
            suspension_reason="",
            flagged_at=None,
            flag_reason="",
        )
        self.refresh_from_db()

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


_ADD_USAGE_SQL = """
    INSERT INTO customers_usage (customer_id, day, shard, messages) VALUES (%s, %s, %s, %s)
    ON CONFLICT (customer_id, day, shard)
    DO UPDATE SET messages = customers_usage.messages + EXCLUDED.messages
"""

_TOTALS_SQL = """
    SELECT COALESCE(SUM(messages) FILTER (WHERE day = %(day)s), 0), COALESCE(SUM(messages), 0)
      FROM customers_usage
     WHERE customer_id = %(customer)s AND day >= %(first)s AND day <= %(day)s
"""


class UsageManager(models.Manager["Usage"]):
    def add_sql(self, customer_id: int, day: date, shard: int, messages: int) -> tuple[str, list]:
        """The upsert that adds to a day's count, as (SQL, params): accepting runs it in the
        same statement as the insert of the messages it counts (mailq/db.py `insert`)."""
        return _ADD_USAGE_SQL, [customer_id, day, shard, messages]

    def totals(self, customer_id: int, day: date) -> tuple[int, int]:
        """(messages on `day`, messages in `day`'s month up to and including it)."""
        with connection.cursor() as cursor:
            cursor.execute(
                _TOTALS_SQL, {"customer": customer_id, "day": day, "first": day.replace(day=1)}
            )
            today, month = cursor.fetchone()
        return int(today), int(month)


class Usage(models.Model):
    """Messages accepted for a customer on one UTC day: the exact, durable usage count.

    Written in the transaction that inserts the messages (customers/quotas.py), in a few
    shards: a busy customer's concurrent sends add to different rows, so they do not queue on one
    row lock held until commit. A day's usage is the sum of its shards.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    shard = models.PositiveSmallIntegerField(default=0)
    messages = models.PositiveBigIntegerField(default=0)

    objects = UsageManager()

    class Meta:
        verbose_name_plural = "usage"
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "day", "shard"], name="usage_customer_day_shard"
            )
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.day}#{self.shard}: {self.messages}"
