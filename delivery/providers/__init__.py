"""Build the provider chain from MAILQ_PROVIDERS (URLs in failover order)."""

from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from delivery.providers.anymail import ESPS, AnymailProvider
from delivery.providers.base import Provider
from delivery.providers.console import ConsoleProvider
from delivery.providers.smtp import SmtpProvider

PROVIDER_CLASSES: dict[str, type] = {
    SmtpProvider.scheme: SmtpProvider,
    ConsoleProvider.scheme: ConsoleProvider,
    **dict.fromkeys(ESPS, AnymailProvider),  # one class for every HTTP service
}


def from_url(url: str) -> Provider:
    scheme = urlsplit(url).scheme
    try:
        cls = PROVIDER_CLASSES[scheme]
    except KeyError:
        known = ", ".join(sorted(PROVIDER_CLASSES))
        raise ImproperlyConfigured(
            f"Unknown provider {scheme!r} in {url!r}; known: {known}"
        ) from None
    return cls.from_url(url)


def build_chain(urls: list[str]) -> list[Provider]:
    if not urls:
        raise ImproperlyConfigured("MAILQ_PROVIDERS is empty: name at least one provider URL")
    return [from_url(url) for url in urls]
