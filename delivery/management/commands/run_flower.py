"""Start Flower once the worker pools answer, so that its broker tab lists their queues.

Flower learns which queues to show on its broker tab by asking the workers when it starts (and
when someone presses Refresh on its Workers page). Started by honcho beside the workers, it
would ask before they are up and show only the maintenance queue.
"""

import argparse
import os
import sys
import time

from django.core.management.base import BaseCommand
from kombu.exceptions import KombuError

from customers.models import Tier
from delivery.management.commands.run_worker import EXPRESS, MAINTENANCE
from mailq.celery import app

FLOWER_CONF = "mailq/flowerconfig.py"


class Command(BaseCommand):
    help = (
        "Wait (up to --wait seconds) until every worker pool answers a ping, then exec "
        "`celery -A mailq flower`; arguments after `--` go to Flower."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--wait", type=float, default=30.0)
        parser.add_argument(
            "--pools",
            default="",
            help="comma-separated pool names (default: every tier, "
            f"{EXPRESS} and {MAINTENANCE}, as in the Procfile)",
        )
        parser.add_argument("flower_args", nargs=argparse.REMAINDER)

    def handle(self, *args, wait: float, pools: str, flower_args: list[str], **options) -> None:
        expected = set(filter(None, pools.split(","))) or {
            *Tier.objects.values_list("name", flat=True),
            EXPRESS,
            MAINTENANCE,
        }
        missing = self.wait_for(expected, wait)
        if missing:
            self.stderr.write(
                f"starting Flower before {', '.join(sorted(missing))} answered: press Refresh "
                "on its Workers page once they run, for the broker tab to list their queues"
            )
        if flower_args[:1] == ["--"]:
            flower_args = flower_args[1:]
        argv = [sys.executable, "-m", "celery", "-A", "mailq", "flower", f"--conf={FLOWER_CONF}"]
        self.stdout.write(" ".join(argv + flower_args))
        self.stdout.flush()
        # exec: Flower becomes this process, so signals from honcho reach it directly.
        os.execv(sys.executable, argv + flower_args)

    def wait_for(self, pools: set[str], seconds: float) -> set[str]:
        """Ping the workers until one of each pool answers; returns the pools that did not."""
        deadline = time.monotonic() + seconds
        missing = set(pools)
        while missing and time.monotonic() < deadline:
            try:
                replies = app.control.ping(timeout=1.0)
            except (KombuError, OSError):  # the broker is not up yet either
                replies = []
                time.sleep(1.0)
            # Workers are named <pool>@<host> (run_worker).
            missing -= {name.split("@")[0] for reply in replies for name in reply}
        return missing
