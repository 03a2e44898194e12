"""API-key authentication: `Authorization: Bearer <key>` -> (Customer, ApiKey).

Every failed attempt counts against the client IP (customers/throttling.py): past the limit the
IP answers 429 for a cool-down instead of 401.
"""

from typing import NoReturn

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from customers import throttling
from customers.models import ApiKey, Customer


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Customer, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None  # anonymous: IsAuthenticated answers 401 missing_api_key
        if len(header) != 2:
            self.fail(request, "Malformed Authorization header.", "invalid_api_key")
        try:
            raw = header[1].decode()
        except UnicodeDecodeError:
            self.fail(request, "Malformed API key.", "invalid_api_key")
        key = ApiKey.objects.for_key(raw)
        if key is None:
            self.fail(request, "Unknown API key.", "invalid_api_key")
        if key.is_revoked:
            self.fail(request, "This API key has been revoked.", "revoked_api_key")
        customer = key.customer
        if not customer.is_active:
            raise exceptions.PermissionDenied(
                "This account is suspended.", code="customer_suspended"
            )
        key.touch()
        return customer, key

    def fail(self, request: Request, message: str, code: str) -> NoReturn:
        """Count the failure against the client IP (429 once locked out), else answer 401."""
        throttling.auth_failed(request)
        raise exceptions.AuthenticationFailed(message, code=code)

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request without valid credentials.
        return f'{self.keyword} realm="mailq"'
