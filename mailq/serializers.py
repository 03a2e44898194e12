"""Serializer pieces shared by every app's API."""

from email.utils import formataddr, getaddresses

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know: a typo ("tempalte") is an error, not a silent default."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                {name: ["Unknown field."] for name in sorted(unknown)}
            )
        return attrs


class MailboxField(serializers.CharField):
    """An address with an optional display name: `ana@example.com` or `Ana <ana@example.com>`."""

    default_error_messages = {"invalid": "Enter a valid email address."}

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_length", 320)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not value:
            return value
        if any(ch in value for ch in "\r\n\x00"):
            self.fail("invalid")  # header injection
        parsed = getaddresses([value])
        if len(parsed) != 1:
            self.fail("invalid")  # one mailbox, not a list
        name, address = parsed[0]
        try:
            validate_email(address)
        except DjangoValidationError:
            self.fail("invalid")
        return formataddr((name, address)) if name else address
