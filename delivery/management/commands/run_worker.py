import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from customers.models import Tier
from delivery import priority
from delivery.queues import ensure, express_queue

MAINTENANCE = "maintenance"
EXPRESS = "express"


class Command(BaseCommand):
    help = (
        "Run the Celery worker pool of one tier (its queue, concurrency = pool weight x "
        "MAILQ_WORKERS_PER_WEIGHT), the express pool (every tier's express lane, "
        "MAILQ_EXPRESS_CONCURRENCY threads), or the maintenance worker (sweeper)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("pool", help=f"a tier name, {EXPRESS!r} or {MAINTENANCE!r}")
        parser.add_argument("--concurrency", type=int, default=None)
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args, pool: str, concurrency: int | None, loglevel: str, **options) -> None:
        if pool == MAINTENANCE:
            queue, default_concurrency = settings.MAILQ_MAINTENANCE_QUEUE, 1
        elif pool == EXPRESS:
            queues = Tier.objects.values_list("queue", flat=True)
            queue = ",".join(express_queue(q) for q in queues)
            default_concurrency = settings.MAILQ_EXPRESS_CONCURRENCY
        else:
            tier = Tier.objects.filter(name=pool).first()
            if tier is None:
                known = ", ".join(Tier.objects.values_list("name", flat=True))
                raise CommandError(f"No tier {pool!r}; known: {known}, {EXPRESS} or {MAINTENANCE}")
            per_weight = int(os.environ.get("MAILQ_WORKERS_PER_WEIGHT", "1"))
            queue, default_concurrency = tier.queue, tier.pool_weight * per_weight
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "mailq",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{pool}@%h",
            "-c",
            str(concurrency or default_concurrency),
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
        if pool == EXPRESS:
            # Threads by default, not prefork: a quiet customer's task then runs in the
            # process that received it, with no hand-over through a pipe to a child process
            # and back for the ack. The work itself is I/O (PostgreSQL, SMTP).
            argv += ["--pool", settings.MAILQ_EXPRESS_POOL]
        for name in ensure(queue.split(",")):
            self.stderr.write(
                f"replaced queue {name} (declared differently); its messages are republished"
            )
        if pool not in (EXPRESS, MAINTENANCE):
            # On a saturated machine, accepting (the durability promise) and the express lane
            # get the CPU before bulk delivery: a burst is taken in at full speed, and quiet
            # customers' mail does not queue behind it for CPU. The pool's PostgreSQL backends
            # follow (delivery/priority.py).
            priority.lower_own(settings.MAILQ_BULK_NICE)
        self.stdout.write(" ".join(argv))
        self.stdout.flush()
        # exec: the Celery worker becomes this process, so signals (SIGTERM = warm shutdown)
        # reach it directly from honcho or a process manager.
        os.execv(sys.executable, argv)
