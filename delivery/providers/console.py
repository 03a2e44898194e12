"""Console provider: prints each email to standard output. For development only."""

import sys
from typing import ClassVar

from delivery.providers.base import Email, SendResult


class ConsoleProvider:
    scheme: ClassVar[str] = "console"
    name = "console://"

    @classmethod
    def from_url(cls, url: str) -> "ConsoleProvider":
        return cls()

    def send(self, email: Email) -> SendResult:
        sys.stdout.write(email.to_bytes().decode() + "\n" + "-" * 72 + "\n")
        sys.stdout.flush()
        return SendResult(provider=self.name, provider_message_id=email.message_id)

    def close(self) -> None:
        pass
