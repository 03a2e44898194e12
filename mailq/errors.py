"""One JSON error shape for every failure: {"error": {"code", "message", "fields"}}.

Domain code raises `ApiError` subclasses (or DRF's own exceptions); `exception_handler` is the
only place that turns them into responses. Django-level 404/500 (URLs outside DRF views) use the
same shape through `handler404` / `handler500`.
"""

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response


class ApiError(Exception):
    """A client error with a stable machine-readable code."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class Unprocessable(ApiError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "validation_error"


class RateLimited(ApiError):
    """429: slow down. The handler sends `retry_after` (seconds) as the Retry-After header."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "rate_limited"

    def __init__(
        self, message: str, retry_after: int, fields: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, fields)
        self.retry_after = max(int(retry_after), 1)


class QuotaExceeded(RateLimited):
    """429: the daily or monthly quota is used up; Retry-After points at its reset."""

    code = "quota_exceeded"


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def flatten_detail(detail: Any) -> Any:
    """DRF ErrorDetail trees -> plain lists/dicts of strings."""
    if isinstance(detail, dict):
        return {key: flatten_detail(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [flatten_detail(item) for item in detail]
    return str(detail)


# DRF exception class -> our code. Checked in order, so subclasses come first.
_DRF_CODES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.ParseError, "malformed_json"),
    (exceptions.AuthenticationFailed, "unauthenticated"),
    (exceptions.NotAuthenticated, "missing_api_key"),
    (exceptions.PermissionDenied, "forbidden"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "rate_limited"),
]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF EXCEPTION_HANDLER: every handled error leaves in the JSON error shape."""
    if isinstance(exc, ApiError):
        response = Response(error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("payload_too_large", "The request body is too large."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500 (JSON, via handler500)

    if isinstance(exc, exceptions.ValidationError):
        fields = flatten_detail(exc.detail)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields}
        response = Response(
            error_body("validation_error", "The request is invalid.", fields),
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    else:
        # An explicit code given where the exception was raised wins over the class default.
        code = getattr(exc.detail, "code", None)
        if code is None or code == exc.default_code:
            code = next(
                (code for cls, code in _DRF_CODES if isinstance(exc, cls)), exc.default_code
            )
        message = flatten_detail(exc.detail)
        if not isinstance(message, str):
            message = str(message)
        if isinstance(exc, exceptions.ParseError):
            message = (
                f"The request body is not valid JSON: {message.removeprefix('JSON parse error - ')}"
            )
        elif isinstance(exc, exceptions.NotAuthenticated):
            message = "Missing API key: send 'Authorization: Bearer <key>'."
        response = Response(error_body(code, message), status=exc.status_code)
    if getattr(exc, "auth_header", None):
        response["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        response["Retry-After"] = str(int(exc.wait + 0.999))
    return response


def handler404(request, exception=None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def handler500(request) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


def handler400(request, exception=None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)


class UnknownTemplate(Unprocessable):
    code = "unknown_template"


class RenderFailed(Unprocessable):
    code = "render_error"
