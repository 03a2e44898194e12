"""Operators' web endpoints: `/metrics` for Prometheus, and the dashboard in the admin.

`/metrics` is not public: with MAILQ_METRICS_TOKEN set it wants `Authorization: Bearer
<token>` from everyone; without it only loopback clients may read it (the client address is
read as the throttle reads it, MAILQ_CLIENT_IP_META, so a proxy in front cannot make every
client look local). Refusals use the JSON error shape.

The dashboard is one admin page whose panel a few lines of JavaScript re-fetch every
MAILQ_DASHBOARD_REFRESH_SECONDS; the panel is rendered by the same template on first load
and on refresh, from one `snapshot.take()` (a fixed number of queries).
"""

import hmac
import ipaddress

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST

from delivery import metrics, snapshot
from mailq.errors import error_body


def _refusal(request: HttpRequest) -> JsonResponse | None:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            error_body("method_not_allowed", f"Method {request.method} is not allowed."),
            status=405,
        )
    token = settings.MAILQ_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = JsonResponse(
                error_body("missing_token", "Send 'Authorization: Bearer <metrics token>'."),
                status=401,
            )
        elif not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = JsonResponse(error_body("invalid_token", "Wrong metrics token."), status=401)
        else:
            return None
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not _is_loopback(request.META.get(settings.MAILQ_CLIENT_IP_META, "")):
        return JsonResponse(
            error_body(
                "forbidden",
                "Metrics are served to loopback clients only; set MAILQ_METRICS_TOKEN to "
                "scrape from elsewhere.",
            ),
            status=403,
        )
    return None


def _is_loopback(raw: str) -> bool:
    try:
        address = ipaddress.ip_address(raw.split(",")[0].strip())
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition: every process's events, then the state read now."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


# --- the operator dashboard (admin) ----------------------------------------------------------


def _panel_context() -> dict:
    snap = snapshot.take()
    sent = metrics.delivered_totals()
    return {
        "snapshot": snap,
        "rows": [(tier, sent.get(tier.name, 0)) for tier in snap.tiers],
        "breakers": sorted(metrics.breaker_states().items()),
    }


@never_cache
def dashboard(request: HttpRequest) -> TemplateResponse:
    """The page (admin.site.admin_view wraps it: staff only, login redirect)."""
    context = {
        **admin.site.each_context(request),
        **_panel_context(),
        "title": "Delivery dashboard",
        "refresh_seconds": settings.MAILQ_DASHBOARD_REFRESH_SECONDS,
    }
    return TemplateResponse(request, "admin/delivery/dashboard.html", context)


@never_cache
def dashboard_panel(request: HttpRequest) -> HttpResponse:
    """The panel alone, for the page's refresh; staff only (403 in the JSON error shape, so
    the page can say its session ended instead of showing a login form in the panel)."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return JsonResponse(error_body("forbidden", "Staff only: log in to the admin."), status=403)
    return TemplateResponse(request, "admin/delivery/dashboard_panel.html", _panel_context())
