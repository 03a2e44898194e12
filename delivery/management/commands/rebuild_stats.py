from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from delivery import stats


class Command(BaseCommand):
    help = (
        "Recompute the statistics rollups of the last HOURS from the messages (backfill after "
        "an upgrade, or repair). Run it with the workers stopped."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--hours", type=int, default=25, help="how far back (default 25)")

    def handle(self, *args, hours: int, **options) -> None:
        rows = stats.rebuild(timezone.now() - timedelta(hours=hours))
        self.stdout.write(f"{rows} rollup rows written for the last {hours} h")
