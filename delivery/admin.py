from django.contrib import admin

from delivery.models import DeliveryAttempt, Message


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ["provider", "started_at", "duration_ms", "succeeded", "permanent", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "customer", "status", "accepted_at", "sent_at", "attempts", "provider"]
    list_filter = ["status", "queue"]
    list_select_related = ["customer"]
    search_fields = ["=id", "customer__name"]
    date_hierarchy = "accepted_at"
    show_full_result_count = False  # COUNT(*) over millions of rows would make the page slow
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [DeliveryAttemptInline]

    def has_add_permission(self, request) -> bool:
        return False
