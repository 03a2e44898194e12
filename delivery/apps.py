from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"

    def ready(self) -> None:
        from delivery import priority  # noqa: F401  (connects its connection_created receiver)
