from django.contrib import admin

from templates.models import EmailTemplate, TemplateVersion


class TemplateVersionInline(admin.TabularInline):
    model = TemplateVersion
    fields = ["number", "subject", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(EmailTemplate)
class EmailTemplateAdmin(admin.ModelAdmin):
    list_display = ["slug", "customer", "name", "updated_at", "deleted_at"]
    list_select_related = ["customer"]
    search_fields = ["slug", "customer__name"]
    readonly_fields = ["current_version"]
    inlines = [TemplateVersionInline]
