"""The customer's status page: its own delivery figures as charts, server-rendered HTML.

Reached by a signed link, never by an API key in a URL:
- an operator makes one in the admin (customer list -> "Status page link"), valid
  MAILQ_STATUS_LINK_SECONDS (7 days);
- or the customer pastes its API key into the form at /status/ (a POST, CSRF-protected, counted
  against the client IP's failed-authentication lockout like an API call) and is redirected
  to a link valid MAILQ_STATUS_KEY_LINK_SECONDS (1 hour).
A link carries only the customer's id and an expiry, signed with SECRET_KEY (django.core.
signing), so it opens that customer's figures and nobody else's, and cannot be altered.
"""

import time

from django.conf import settings
from django.core import signing
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from customers import throttling
from customers.models import ApiKey, Customer
from delivery import charts, stats
from mailq.errors import RateLimited
from templates.models import EmailTemplate

_SALT = "mailq.status-page"
# No scripts, nothing from elsewhere: the page is HTML, inline CSS and inline SVG.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def signed_link(customer_id: int, seconds: int) -> str:
    """The path of a status page link for this customer, valid for `seconds`."""
    token = signing.dumps({"c": customer_id, "u": int(time.time()) + seconds}, salt=_SALT)
    return reverse("status-page", args=[token])


def _customer_for(token: str) -> Customer | None:
    try:
        claim = signing.loads(token, salt=_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(claim, dict) or claim.get("u", 0) < time.time():
        return None
    return Customer.objects.filter(pk=claim.get("c")).first()


def _private(response: HttpResponse) -> HttpResponse:
    """One customer's figures: never cached, never a Referer to another site, never framed."""
    response["Cache-Control"] = "private, no-store"
    response["Referrer-Policy"] = "same-origin"  # "no-referrer" would send Origin: null (CSRF)
    response["Content-Security-Policy"] = _CSP
    response["X-Robots-Tag"] = "noindex"
    return response


@require_http_methods(["GET", "POST"])
def key_form(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST `api_key`: a redirect to a short-lived link, or the form again."""
    if request.method == "GET":
        return _private(render(request, "delivery/status_key.html"))
    try:
        # A locked-out address is refused before its key is looked at, as the API does.
        throttling.check_lockout(request)
        key = ApiKey.objects.for_key(request.POST.get("api_key", "").strip())
        if key is None or key.is_revoked:
            throttling.auth_failed(request)
            return _form_error(request, "That API key is not valid.", 401)
    except RateLimited as exc:
        return _form_error(request, exc.message, 429)
    link = signed_link(key.customer_id, settings.MAILQ_STATUS_KEY_LINK_SECONDS)
    return _private(HttpResponseRedirect(link, status=303))


def _form_error(request: HttpRequest, error: str, status: int) -> HttpResponse:
    page = render(request, "delivery/status_key.html", {"error": error}, status=status)
    return _private(page)


@require_http_methods(["GET"])
def page(request: HttpRequest, token: str) -> HttpResponse:
    """The status page of the customer named by a valid, unexpired link (`?template=slug`
    narrows it to one template, as GET /v1/stats does)."""
    customer = _customer_for(token)
    if customer is None:
        return _form_error(request, "This link is not valid or has expired.", 403)
    slug = request.GET.get("template", "")[:100] or None
    where = stats.scope(customer.pk, slug)
    unknown = slug if where is None else None
    where = where or stats.Scope(customer.pk)
    now = timezone.now()
    figures = stats.summary(customer.pk, where.template_ids, now)
    hourly = stats.hourly(customer.pk, where.template_ids, now)
    unfinished, exact = stats.unfinished(customer.pk, where.version_ids)
    windows = [("Last hour", figures.hour), ("Last 24 hours", figures.day)]
    context = {
        "customer": customer,
        "now": now,
        "template": where.template,
        "unknown_template": unknown,
        "templates": EmailTemplate.objects.owned_by(customer)
        .order_by("slug")
        .values_list("slug", flat=True),
        "windows": [
            {"name": name, "counts": _thousands(f.counts), "latency": _labels(f.latency())}
            for name, f in windows
        ],
        "unfinished": _thousands(unfinished),
        "unfinished_exact": exact,
        "charts": [charts.latency_chart(hourly), charts.volume_chart(hourly)],
    }
    return _private(render(request, "delivery/status.html", context))


def _labels(latency: dict) -> dict[str, str]:
    return {
        name: "-" if value is None else charts.seconds_label(value)
        for name, value in latency.items()
        if name != "samples"
    }


def _thousands(counts: dict[str, int]) -> dict[str, str]:
    return {name: f"{count:,}" for name, count in counts.items()}
