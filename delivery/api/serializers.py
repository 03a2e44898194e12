from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from delivery.intake import SendRequest
from delivery.models import DeliveryAttempt, Message, Status
from mailq.serializers import MailboxField, StrictSerializer


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "format": "email"},
            {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1},
        ]
    }
)
class RecipientsField(serializers.Field):
    """An email address or a non-empty list of them."""

    default_error_messages = {
        "type": "Must be an email address or a list of email addresses.",
        "empty": "At least one recipient is required.",
        "too_many": "At most {limit} recipients.",
    }

    _address = serializers.EmailField()  # stateless: one instance validates every address

    def to_internal_value(self, value):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail("type")
        if not value:
            self.fail("empty")
        if len(value) > settings.MAILQ_MAX_RECIPIENTS:
            self.fail("too_many", limit=settings.MAILQ_MAX_RECIPIENTS)
        errors, addresses = {}, []
        for index, address in enumerate(value):
            try:
                addresses.append(self._address.run_validation(address.strip()))
            except serializers.ValidationError as exc:
                errors[index] = exc.detail
        if errors:
            raise serializers.ValidationError(errors)
        return addresses

    def to_representation(self, value):
        return value


def _has_nul(value) -> bool:
    """Whether any key or string in a JSON value holds U+0000 (depth is bounded by the parser)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class SendSerializer(StrictSerializer):
    template = serializers.SlugField(max_length=100)
    to = RecipientsField()
    data = serializers.DictField(required=False, default=dict)
    reply_to = MailboxField(required=False, allow_blank=True, default="")
    send_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_data(self, value: dict) -> dict:
        # PostgreSQL's jsonb cannot store U+0000: refuse it here, not as a failed insert (500).
        if _has_nul(value):
            raise serializers.ValidationError("Null characters are not allowed.")
        return value

    def get_fields(self):
        fields = super().get_fields()
        # "from" is a Python keyword, so the field is declared here.
        fields["from"] = MailboxField(required=False, allow_blank=True, default="")
        return fields

    def to_send_request(self) -> SendRequest:
        return self.send_request(self.validated_data)

    @staticmethod
    def send_request(data: dict) -> SendRequest:
        return SendRequest(
            template=data["template"],
            to=data["to"],
            data=data["data"],
            from_email=data["from"],
            reply_to=data["reply_to"],
            send_at=data["send_at"],
        )


class BatchSerializer(StrictSerializer):
    messages = serializers.ListField(
        child=serializers.JSONField(),
        allow_empty=False,
        max_length=settings.MAILQ_BATCH_MAX_ITEMS,
    )


class MessageSerializer(serializers.ModelSerializer):
    template = serializers.CharField(source="template_version.template.slug", read_only=True)
    template_version = serializers.IntegerField(source="template_version.number", read_only=True)
    status = serializers.ChoiceField(choices=Status.choices)

    class Meta:
        model = Message
        fields = [
            "id",
            "status",
            "template",
            "template_version",
            "to",
            "from_email",
            "reply_to",
            "send_at",
            "accepted_at",
            "queued_at",
            "sending_at",
            "sent_at",
            "finished_at",
            "attempts",
            "provider",
            "last_error",
            "idempotency_key",
        ]
        read_only_fields = fields

    def to_representation(self, instance):
        body = super().to_representation(instance)
        body["from"] = body.pop("from_email")
        return body


class AcceptedSerializer(serializers.Serializer):
    """The short answer to a send: enough to poll the message later."""

    id = serializers.UUIDField()
    status = serializers.CharField()
    accepted_at = serializers.DateTimeField()
    send_at = serializers.DateTimeField(allow_null=True)


class BatchResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = serializers.ListField(
        child=serializers.DictField(),
        help_text='In request order: {"id", "status", ...} or {"error": {...}} per message.',
    )


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["provider", "started_at", "duration_ms", "succeeded", "error", "permanent"]


class MessageFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Status.choices, required=False)
    since = serializers.DateTimeField(required=False)
    template = serializers.SlugField(required=False)


class StatsFilterSerializer(StrictSerializer):
    template = serializers.SlugField(
        max_length=100, required=False, help_text="Only this template's messages (its slug)."
    )


class StatusCountsSerializer(serializers.Serializer):
    sent = serializers.IntegerField()
    failed = serializers.IntegerField()
    dead = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class LatencySerializer(serializers.Serializer):
    """Seconds from acceptance (or `send_at`, when later) to sent, of the sent messages."""

    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)
    mean = serializers.FloatField(allow_null=True)
    samples = serializers.IntegerField(help_text="Sent messages the figures are computed from.")


class StatsWindowSerializer(serializers.Serializer):
    since = serializers.DateTimeField(help_text="Start of the first whole minute counted.")
    counts = StatusCountsSerializer(help_text="Messages that reached each final status.")
    latency = LatencySerializer()


class UnfinishedCountsSerializer(serializers.Serializer):
    deferred = serializers.IntegerField()
    queued = serializers.IntegerField()
    sending = serializers.IntegerField()
    retrying = serializers.IntegerField()


class StatsSerializer(serializers.Serializer):
    template = serializers.CharField(allow_null=True)
    generated_at = serializers.DateTimeField()
    last_hour = StatsWindowSerializer(help_text="The last 60 minutes, the current one included.")
    last_day = StatsWindowSerializer(help_text="The last 1,440 minutes, the current one included.")
    unfinished = UnfinishedCountsSerializer(
        help_text="Messages not finished now (live). Each count stops at MAILQ_STATS_LIVE_LIMIT."
    )
    unfinished_exact = serializers.BooleanField(
        help_text="False when a count stopped at the limit: it is then a lower bound."
    )
    latency_bucket_bounds = serializers.ListField(
        child=serializers.FloatField(),
        help_text=(
            "Upper bounds (s) of the latency histogram. Percentiles are estimated from it: the "
            "bucket holding the rank, then linear interpolation inside it; past the last bound "
            "the answer is that bound (a floor)."
        ),
    )
