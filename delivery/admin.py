from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Subquery
from django.utils import timezone
from django.utils.text import Truncator

from customers.admin import CustomerAdmin
from customers.models import Customer
from delivery import breaker, routing, status_page
from delivery.models import REDRIVABLE, DeadLetter, DeliveryAttempt, Message, Status

# The admin index links to the delivery dashboard (delivery/operators.py).
admin.site.index_template = "admin/mailq_index.html"


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

    def changelist_view(self, request, extra_context=None):
        # Read-only: the breakers open and close by themselves (delivery/breaker.py).
        extra_context = {**(extra_context or {}), "breakers": breaker.snapshot()}
        return super().changelist_view(request, extra_context)


@admin.register(DeadLetter)
class DeadLetterAdmin(MessageAdmin):
    """Messages given up on, with why; an operator sends them again or cancels them for good."""

    list_display = ["id", "customer", "status", "reason", "attempts", "accepted_at", "finished_at"]
    list_filter = ["status", "customer__tier"]
    date_hierarchy = "finished_at"
    actions = ["redrive_selected", "cancel_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status__in=REDRIVABLE)

    @admin.display(description="reason", ordering="last_error")
    def reason(self, message: Message) -> str:
        return Truncator(message.last_error).chars(120)

    @admin.action(description="Redrive selected (send again, fresh attempts)")
    def redrive_selected(self, request, queryset) -> None:
        # routing decides when each goes: within its customer's fair-share cap.
        redriven = routing.redrive(queryset.values_list("pk", flat=True))
        self.message_user(request, f"Redriven {len(redriven)} message(s).")

    @admin.action(description="Cancel selected (never send)")
    def cancel_selected(self, request, queryset) -> None:
        count = queryset.filter(status__in=REDRIVABLE).update(
            status=Status.CANCELLED, finished_at=timezone.now()
        )
        self.message_user(request, f"Cancelled {count} message(s).")


# --- fair-share controls on the customer admin ------------------------------------------------
# The customer admin lives in customers/; the delivery side extends it here so that customers/
# never imports delivery/.


def _count(**filters) -> Subquery:
    # A correlated subquery runs only for the rows of the page shown, on partial indexes.
    return Subquery(
        Message.objects.filter(customer=OuterRef("pk"), **filters)
        .order_by()
        .values("customer")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )


admin.site.unregister(Customer)


@admin.register(Customer)
class CustomerFlowAdmin(CustomerAdmin):
    list_display = [*CustomerAdmin.list_display, "cap", "in_flight", "deferred", "sending_paused"]
    list_filter = [*CustomerAdmin.list_filter, "sending_paused"]
    actions = [*CustomerAdmin.actions, "pause_sending", "resume_sending", "status_page_link"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                in_flight_count=_count(status__in=[Status.QUEUED, Status.SENDING]),
                deferred_count=_count(status=Status.DEFERRED, release_at__isnull=True),
            )
        )

    @admin.display(description="in-flight cap")
    def cap(self, customer: Customer) -> int:
        return customer.effective_inflight_cap

    @admin.display(description="in flight", ordering="in_flight_count")
    def in_flight(self, customer: Customer) -> int:
        return customer.in_flight_count or 0

    @admin.display(description="deferred", ordering="deferred_count")
    def deferred(self, customer: Customer) -> int:
        return customer.deferred_count or 0

    @admin.action(description="Pause sending (messages wait, nothing is lost)")
    def pause_sending(self, request, queryset) -> None:
        count = queryset.update(sending_paused=True)
        self.message_user(request, f"Paused {count} customer(s).")

    @admin.action(description="Resume sending")
    def resume_sending(self, request, queryset) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        queryset.update(sending_paused=False)
        released = routing.refill(ids)
        self.message_user(request, f"Resumed {len(ids)} customer(s); released {released}.")

    @admin.action(description="Status page link for the customer (signed, expires)")
    def status_page_link(self, request, queryset) -> None:
        seconds = settings.MAILQ_STATUS_LINK_SECONDS
        for customer in queryset:
            link = request.build_absolute_uri(status_page.signed_link(customer.pk, seconds))
            days = seconds / 86400
            self.message_user(
                request, f"Status page of {customer} ({days:g} days): {link}", messages.INFO
            )
