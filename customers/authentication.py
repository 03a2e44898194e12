"""API-key authentication: `Authorization: Bearer <key>` -> (Customer, ApiKey)."""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from customers.models import ApiKey, Customer


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Customer, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None  # anonymous: IsAuthenticated answers 401 missing_api_key
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header.", code="invalid_api_key"
            )
        try:
            raw = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(
                "Malformed API key.", code="invalid_api_key"
            ) from None
        key = ApiKey.objects.for_key(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Unknown API key.", code="invalid_api_key")
        if key.is_revoked:
            raise exceptions.AuthenticationFailed(
                "This API key has been revoked.", code="revoked_api_key"
            )
        customer = key.customer
        if not customer.is_active:
            raise exceptions.PermissionDenied(
                "This account is suspended.", code="customer_suspended"
            )
        key.touch()
        return customer, key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request without valid credentials.
        return f'{self.keyword} realm="mailq"'
