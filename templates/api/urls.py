from django.urls import path

from templates.api import views

urlpatterns = [
    path("templates", views.TemplatesView.as_view(), name="templates"),
    path("templates/<slug:slug>", views.TemplateDetailView.as_view(), name="template-detail"),
    path(
        "templates/<slug:slug>/preview",
        views.TemplatePreviewView.as_view(),
        name="template-preview",
    ),
]
