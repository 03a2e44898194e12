"""Operators' admin: tiers, customers (limits, usage, flags, suspensions) and API keys.

The customer list stays a fixed number of queries however many customers there are: the tier
comes with select_related, and usage is two correlated subqueries that PostgreSQL runs only for
the rows of the page shown, on the usage table's (customer, day, shard) index.
"""

from datetime import UTC, datetime

from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery, Sum
from django.utils.html import format_html, format_html_join

from customers import abuse, quotas
from customers.models import ApiKey, Customer, Tier, Usage


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "queue",
        "pool_weight",
        "api_rate_per_second",
        "api_burst",
        "daily_quota",
        "monthly_quota",
        "inflight_cap",
    ]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ["prefix", "name", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are issued with the "Issue a new API key" action (shown once)


def _usage_since(first_day) -> Subquery:
    return Subquery(
        Usage.objects.filter(customer=OuterRef("pk"), day__gte=first_day)
        .order_by()
        .values("customer")
        .annotate(n=Sum("messages"))
        .values("n")[:1]
    )


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "tier",
        "status",
        "rate_limit",
        "used_today",
        "used_this_month",
        "flagged",
        "created_at",
    ]
    list_filter = ["tier", "status", ("flagged_at", admin.EmptyFieldListFilter)]
    list_select_related = ["tier"]
    search_fields = ["name"]
    inlines = [ApiKeyInline]
    actions = ["issue_key", "reinstate", "suspend", "clear_flag"]
    fieldsets = [
        (None, {"fields": ["name", "tier", "status", "default_from", "created_at"]}),
        (
            "API limits (empty: the tier's value)",
            {"fields": [("api_rate_per_second", "api_burst"), ("daily_quota", "monthly_quota")]},
        ),
        ("Usage", {"fields": ["quota_usage"]}),
        (
            "Abuse",
            {"fields": [("flagged_at", "flag_reason"), ("suspended_at", "suspension_reason")]},
        ),
        ("Delivery", {"fields": ["inflight_cap", "sending_paused"]}),
    ]
    # Status changes go through the actions, which record when and why.
    readonly_fields = [
        "status",
        "created_at",
        "quota_usage",
        "flagged_at",
        "flag_reason",
        "suspended_at",
        "suspension_reason",
    ]

    def get_queryset(self, request):
        day, month = quotas.periods(datetime.now(UTC))
        return (
            super()
            .get_queryset(request)
            .annotate(
                used_day=_usage_since(day.start),
                used_month=_usage_since(month.start),
            )
        )

    @admin.display(description="rate / burst")
    def rate_limit(self, customer: Customer) -> str:
        limits = customer.limits
        return f"{limits.rate_per_second}/s, {limits.burst:,}"

    @admin.display(description="today / quota", ordering="used_day")
    def used_today(self, customer: Customer) -> str:
        return f"{customer.used_day or 0:,} / {customer.limits.daily_quota:,}"

    @admin.display(description="month / quota", ordering="used_month")
    def used_this_month(self, customer: Customer) -> str:
        return f"{customer.used_month or 0:,} / {customer.limits.monthly_quota:,}"

    @admin.display(description="flagged", boolean=True, ordering="flagged_at")
    def flagged(self, customer: Customer) -> bool:
        return customer.flagged_at is not None

    @admin.display(description="usage (UTC, exact)")
    def quota_usage(self, customer: Customer) -> str:
        if customer.pk is None:
            return "-"
        rows = [
            (usage.period.label, f"{usage.used:,}", f"{usage.limit:,}", f"{usage.remaining:,}")
            for usage in quotas.usage(customer)
        ]
        return format_html(
            "<table><tr><th>period</th><th>used</th><th>quota</th><th>left</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.action(description="Issue a new API key (shown once)")
    def issue_key(self, request, queryset) -> None:
        for customer in queryset:
            _, raw = customer.issue_key(name=f"admin:{request.user}")
            self.message_user(request, f"New key for {customer}: {raw}", messages.WARNING)

    @admin.action(description="Reinstate (lift a suspension, clear the flag)")
    def reinstate(self, request, queryset) -> None:
        for customer in queryset:
            customer.reinstate()
            abuse.forget(customer)  # judge its traffic afresh
        self.message_user(request, f"Reinstated {len(queryset)} customer(s).")

    @admin.action(description="Suspend (API calls answer 403 until reinstated)")
    def suspend(self, request, queryset) -> None:
        count = sum(customer.suspend(f"by {request.user} in the admin") for customer in queryset)
        self.message_user(request, f"Suspended {count} customer(s).")

    @admin.action(description="Clear the flag")
    def clear_flag(self, request, queryset) -> None:
        count = queryset.update(flagged_at=None, flag_reason="")
        self.message_user(request, f"Cleared {count} flag(s).")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "customer", "name", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["customer"]
    search_fields = ["prefix", "customer__name"]
    readonly_fields = ["prefix", "customer", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset) -> None:
        for key in queryset:
            key.revoke()
