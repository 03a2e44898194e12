"""Project-wide middleware: refuse oversize bodies before anything parses them; count and time
every request for the metrics."""

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve

from customers import throttling
from customers.models import Customer
from delivery import metrics
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


class RequestMetricsMiddleware:
    """Count and time every request by endpoint, and count 429 refusals by tier and reason.

    First in MIDDLEWARE, so it sees every answer (a 413 from the body limit too). The endpoint
    label is the URL pattern (`/v1/messages/<uuid:message_id>`), never the path, so the label
    set stays bounded whatever clients send.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        endpoint = _endpoint(request)
        metrics.HTTP_REQUESTS.labels(endpoint, request.method, response.status_code).inc()
        metrics.HTTP_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        if response.status_code == 429:
            _count_refusal(request)
        return response


def _endpoint(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        # Answered before URL resolution (413, static files): resolve here, off the hot path.
        if request.path_info.startswith("/" + settings.STATIC_URL.lstrip("/")):
            return "/" + settings.STATIC_URL.lstrip("/")
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unmatched"
    return "/" + match.route


def _count_refusal(request: HttpRequest) -> None:
    decision: throttling.Decision | None = getattr(request, "mailq_throttle", None)
    if decision is None:
        # Refused before the throttle decided: the client IP is locked out after failed
        # authentications. DRF sets `user` once a key authenticated (type() does not evaluate
        # the lazy session user).
        user = getattr(request, "user", None)
        tier = user.tier.name if type(user) is Customer else "none"
        metrics.THROTTLED.labels(tier, "ip_lockout").inc()
        return
    tier = decision.customer.tier.name
    if decision.outcome == throttling.RATE:
        metrics.THROTTLED.labels(tier, "rate_limit").inc()
    elif decision.outcome in (throttling.DAY_QUOTA, throttling.MONTH_QUOTA):
        period = "day" if decision.outcome == throttling.DAY_QUOTA else "month"
        metrics.OVER_QUOTA.labels(tier, period).inc()
