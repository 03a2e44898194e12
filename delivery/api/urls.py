from django.urls import path

from delivery.api import views

urlpatterns = [
    path("messages", views.MessagesView.as_view(), name="messages"),
    path("messages/batch", views.BatchView.as_view(), name="messages-batch"),
    path("messages/<uuid:message_id>", views.MessageDetailView.as_view(), name="message-detail"),
    path("stats", views.StatsView.as_view(), name="stats"),
    path(
        "messages/<uuid:message_id>/redrive",
        views.MessageRedriveView.as_view(),
        name="message-redrive",
    ),
]
