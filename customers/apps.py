from django.apps import AppConfig


class CustomersConfig(AppConfig):
    name = "customers"

    def ready(self) -> None:
        from customers import schema  # noqa: F401 - registers the OpenAPI extension
