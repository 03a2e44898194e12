from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from delivery import operators, status_page

handler400 = "mailq.errors.handler400"
handler404 = "mailq.errors.handler404"
handler500 = "mailq.errors.handler500"


def healthz(request):
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", operators.metrics_view, name="metrics"),
    path(
        "admin/dashboard/",
        admin.site.admin_view(operators.dashboard),
        name="delivery-dashboard",
    ),
    path("admin/dashboard/panel", operators.dashboard_panel, name="delivery-dashboard-panel"),
    path("admin/", admin.site.urls),
    path("status/", status_page.key_form, name="status-key"),
    path("status/<str:token>", status_page.page, name="status-page"),
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    path("v1/", include("delivery.api.urls")),
    path("v1/", include("templates.api.urls")),
    path("v1/", include("customers.api.urls")),
]
