"""Refuse oversize request bodies before anything reads or parses them."""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from mailq.errors import error_body


class BodySizeLimitMiddleware:
    """413 for a declared Content-Length over the limit (the batch endpoint has its own).

    Runs first, so an abusive client costs us one header comparison, not a JSON parse.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse(error_body("bad_request", "Invalid Content-Length."), status=400)
        limit = (
            settings.MAILQ_MAX_BATCH_BODY_BYTES
            if request.path.rstrip("/").endswith("/messages/batch")
            else settings.MAILQ_MAX_BODY_BYTES
        )
        if length > limit:
            return JsonResponse(
                error_body(
                    "payload_too_large",
                    f"The request body is {length} bytes; the limit is {limit} bytes.",
                ),
                status=413,
            )
        return self.get_response(request)
