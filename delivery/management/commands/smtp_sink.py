import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from delivery.smtp_sink import SinkHandler, maildir_store, start


class Command(BaseCommand):
    help = "Run the development SMTP sink; received mail goes to a Maildir (default var/maildir)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=1025)
        parser.add_argument("--maildir", default=str(Path(settings.BASE_DIR) / "var" / "maildir"))

    def handle(self, *args, host: str, port: int, maildir: str, **options) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        controller = start(SinkHandler(maildir_store(Path(maildir))), host, port)
        self.stdout.write(f"SMTP sink on {host}:{port}, writing to {maildir}", ending="\n")
        self.stdout.flush()
        try:
            stop.wait()
        finally:
            controller.stop()
