from rest_framework import serializers

from mailq.serializers import StrictSerializer
from templates.models import EmailTemplate
from templates.rendering import RenderError, check_syntax

MAX_PART_CHARS = 200_000


class TemplateContentSerializer(StrictSerializer):
    """Subject, html and text of a new version; each must be valid template syntax."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    subject = serializers.CharField(max_length=998)
    html = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=MAX_PART_CHARS,
        trim_whitespace=False,
    )
    text = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=MAX_PART_CHARS,
        trim_whitespace=False,
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if not attrs.get("html") and not attrs.get("text"):
            raise serializers.ValidationError({"html": ["Give html, text or both."]})
        errors = {}
        for part in ("subject", "html", "text"):
            try:
                check_syntax(attrs.get(part, ""), part, html=part == "html")
            except RenderError as exc:
                errors[part] = [exc.message]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class TemplateCreateSerializer(TemplateContentSerializer):
    slug = serializers.SlugField(max_length=100)


class TemplateSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="current_version.number")
    subject = serializers.CharField(source="current_version.subject")
    html = serializers.CharField(source="current_version.html")
    text = serializers.CharField(source="current_version.text")

    class Meta:
        model = EmailTemplate
        fields = ["slug", "name", "version", "subject", "html", "text", "created_at", "updated_at"]
        read_only_fields = fields


class PreviewRequestSerializer(StrictSerializer):
    data = serializers.DictField(required=False, default=dict)


class PreviewSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    subject = serializers.CharField()
    html = serializers.CharField()
    text = serializers.CharField()
