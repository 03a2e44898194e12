from django.urls import path

from customers.api import views

urlpatterns = [
    path("usage", views.UsageView.as_view(), name="usage"),
]
