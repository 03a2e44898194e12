from django.contrib import admin, messages

from customers.models import ApiKey, Customer, Tier


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


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "tier", "status", "created_at"]
    list_filter = ["tier", "status"]
    list_select_related = ["tier"]
    search_fields = ["name"]
    inlines = [ApiKeyInline]
    actions = ["issue_key"]

    @admin.action(description="Issue a new API key (shown once)")
    def issue_key(self, request, queryset) -> None:
        for customer in queryset:
            _, raw = customer.issue_key(name=f"admin:{request.user}")
            self.message_user(request, f"New key for {customer}: {raw}", messages.WARNING)


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
