"""Messages and their delivery attempts. A message's state lives here; the broker carries ids.

The claim (`MessageQuerySet.claim`) is the send ledger: a conditional UPDATE from `queued` to
`sending` that only one worker can win, so a task delivered twice sends once.
"""

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from customers.models import Customer
from templates.models import EmailTemplate, TemplateVersion


class Status(models.TextChoices):
    DEFERRED = "deferred"  # waiting in PostgreSQL (scheduled, or over the fair-share cap)
    QUEUED = "queued"  # released to the broker
    SENDING = "sending"  # claimed by a worker
    SENT = "sent"  # accepted by a provider
    RETRYING = "retrying"  # a temporary failure; waits for release_at
    FAILED = "failed"  # a permanent failure
    DEAD = "dead"  # gave up after MAILQ_MAX_ATTEMPTS temporary failures
    CANCELLED = "cancelled"


CANCELLABLE = (Status.DEFERRED, Status.QUEUED, Status.RETRYING)
# Dead letters: given up on. An operator (admin) or the customer (API) may send them again.
REDRIVABLE = (Status.DEAD, Status.FAILED)
FINAL = (Status.SENT, Status.FAILED, Status.DEAD, Status.CANCELLED)

_CLAIM_SQL = """
    UPDATE delivery_message
       SET status = %s, sending_at = %s, attempts = attempts + 1
     WHERE id = ANY(%s::uuid[]) AND status = %s
 RETURNING *
"""


class MessageQuerySet(models.QuerySet["Message"]):
    def owned_by(self, customer: Customer) -> "MessageQuerySet":
        return self.filter(customer=customer)

    def claim(self, ids: list[str]) -> list["Message"]:
        """Atomically move the still-queued messages among `ids` to `sending` and return them.

        One statement, so two workers holding the same id cannot both win it.
        """
        now = timezone.now()
        return list(
            self.model.objects.raw(
                _CLAIM_SQL, [Status.SENDING, now, [str(i) for i in ids], Status.QUEUED]
            )
        )


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="messages")
    template_version = models.ForeignKey(
        TemplateVersion, on_delete=models.PROTECT, related_name="messages"
    )
    to = models.JSONField(help_text="List of recipient addresses.")
    data = models.JSONField(default=dict, blank=True)
    from_email = models.CharField(max_length=320)
    reply_to = models.CharField(max_length=320, blank=True)
    # NULL, not "", for "no key": the unique constraint applies only to real keys.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)
    # The queue the message is released to: its tier's at acceptance time.
    queue = models.CharField(max_length=64)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    accepted_at = models.DateTimeField(default=timezone.now)
    send_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    # Set once RabbitMQ confirmed the publish; a queued message without it was lost in between.
    published_at = models.DateTimeField(null=True, blank=True)
    sending_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When a deferred or retrying message becomes due (send_at, or the retry backoff).
    release_at = models.DateTimeField(null=True, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    last_error = models.TextField(blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["-accepted_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="unique_idempotency_key_per_customer",
            )
        ]
        indexes = [
            models.Index(fields=["customer", "-accepted_at"], name="message_customer_recent"),
            models.Index(
                fields=["customer", "status", "-accepted_at"], name="message_customer_status"
            ),
            # The sweeper's scans touch only unfinished rows, so keep these indexes partial.
            models.Index(
                fields=["queued_at"],
                condition=models.Q(status="queued", published_at__isnull=True),
                name="message_unpublished",
            ),
            # Fair share: a customer's in-flight count (bounded by its cap, so cheap to count)
            # and its deferred backlog, oldest first.
            models.Index(
                fields=["customer"],
                condition=models.Q(status__in=["queued", "sending"]),
                name="message_inflight",
            ),
            models.Index(
                fields=["customer", "accepted_at"],
                condition=models.Q(status="deferred", release_at__isnull=True),
                name="message_backlog",
            ),
            # Scheduled sends and retries, by due time. Not the backlog (release_at NULL): with
            # those rows in it, the planner took this index for "has customer X a backlog?"
            # (release_at IS NULL, then filter by customer): 23 ms reading a bursting customer's
            # whole backlog, at every quiet customer's accept.
            models.Index(
                fields=["release_at"],
                condition=models.Q(status__in=["retrying", "deferred"], release_at__isnull=False),
                name="message_release_due",
            ),
            models.Index(
                fields=["sending_at"],
                condition=models.Q(status="sending"),
                name="message_sending_lease",
            ),
            # Dead letters counted per queue at every metrics scrape (an index-only count).
            models.Index(
                fields=["queue", "status"],
                condition=models.Q(status__in=["dead", "failed"]),
                name="message_dead_letters_by_queue",
            ),
            # The admin's dead-letter list: few rows, newest first.
            models.Index(
                fields=["-accepted_at"],
                condition=models.Q(status__in=["dead", "failed"]),
                name="message_dead_letters",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def latency_seconds(self) -> float | None:
        if self.sent_at is None:
            return None
        return (self.sent_at - self.accepted_at).total_seconds()


# The provider name of the attempt that records a template that could not render (no provider
# was called; metrics leave it out of provider figures).
RENDER_PROVIDER = "render"


class DeadLetter(Message):
    """The admin's dead-letter view: messages given up on (`dead` or `failed`)."""

    class Meta:
        proxy = True
        verbose_name = "dead letter"


class DeliveryAttempt(models.Model):
    """One try of one message with one provider."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="delivery_attempts")
    provider = models.CharField(max_length=100)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    succeeded = models.BooleanField()
    error = models.TextField(blank=True)
    permanent = models.BooleanField(default=False)

    class Meta:
        ordering = ["started_at"]

    def __str__(self) -> str:
        outcome = "ok" if self.succeeded else ("permanent" if self.permanent else "temporary")
        return f"{self.message_id} via {self.provider}: {outcome}"


# Upper bounds (seconds) of the latency histogram's buckets; the last bucket is open-ended.
# Fixed forever: rows written with other bounds could not be added up. See delivery/stats.py.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip


class MinuteRollup(models.Model):
    """Finished messages of one customer and template in one minute (by `finished_at`).

    Written in the same statement that records the outcomes (delivery/stats.py), so it counts
    exactly the messages whose status changed. `shard` spreads concurrent writers of one busy
    customer over several rows (one per worker process, modulo ROLLUP_SHARDS): a minute's
    figures are the sum of its shards.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="+")
    template = models.ForeignKey(EmailTemplate, on_delete=models.CASCADE, related_name="+")
    minute = models.DateTimeField()
    shard = models.PositiveSmallIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    dead = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    # Sent messages only: seconds from accepted (or send_at, if later) to sent.
    latency_sum = models.FloatField(default=0.0)
    # Sent messages per latency bucket: buckets[i] counts LATENCY_BOUNDS[i-1] <= s < [i].
    buckets = ArrayField(models.IntegerField(), size=len(LATENCY_BOUNDS) + 1)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "template", "minute", "shard"], name="rollup_key"
            )
        ]
        indexes = [
            models.Index(fields=["customer", "minute"], name="rollup_customer_minute"),
            # The sweeper's pruning finds the oldest rows without scanning the table.
            models.Index(fields=["minute"], name="rollup_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.template_id} {self.minute:%Y-%m-%d %H:%M}#{self.shard}"
