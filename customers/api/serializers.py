from rest_framework import serializers


class RateSerializer(serializers.Serializer):
    per_second = serializers.IntegerField(help_text="Sustained messages per second.")
    burst = serializers.IntegerField(
        help_text="Messages admitted at once when unused; also the largest batch."
    )


class PeriodUsageSerializer(serializers.Serializer):
    period = serializers.CharField(source="period.label", help_text="2026-11-22, or 2026-11.")
    used = serializers.IntegerField(help_text="Messages accepted in the period.")
    limit = serializers.IntegerField()
    remaining = serializers.IntegerField()
    resets_at = serializers.DateTimeField(source="period.resets_at")


class UsageSerializer(serializers.Serializer):
    rate = RateSerializer()
    day = PeriodUsageSerializer()
    month = PeriodUsageSerializer()
