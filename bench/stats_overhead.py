"""What the per-minute rollups cost on the worker's record path, per message.

    .venv/bin/python bench/stats_overhead.py [--messages 20000] [--rounds 10]

The worker records each group of MAILQ_RECORD_EVERY (10) outcomes with one statement
(delivery/sending.py `_record`); with rollups that statement also upserts the group's
minute row (delivery/stats.py `with_rollup`). This runs `_record` itself on real rows in the
database `mailq_bench_stats` (dropped and recreated), alternating rounds with the rollup
upsert removed ("off": the statement as it was before rollups) and kept ("on"), and reports
the client's CPU, the PostgreSQL backend's CPU (/proc) and wall time per message, as medians
over rounds. Both modes write the same attempts and outcomes; only the upsert differs.
"""

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = "mailq_bench_stats"
TICK = os.sysconf("SC_CLK_TCK")


def _setup_django() -> None:
    import psycopg2

    conn = psycopg2.connect("postgres://mailq:mailq@127.0.0.1:5432/postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{DB}"')
    conn.close()
    os.environ["DATABASE_URL"] = f"postgres://mailq:mailq@127.0.0.1:5432/{DB}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailq.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", "--noinput", verbosity=0)


def _backend_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000, help="per mode")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per mode")
    args = parser.parse_args()
    _setup_django()

    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from customers.models import Customer, Tier
    from delivery import sending, stats
    from delivery.models import DeliveryAttempt, Message, Status
    from templates.models import EmailTemplate

    customer = Customer.objects.create(name="bench", tier=Tier.objects.get(name="standard"))
    template = EmailTemplate.objects.create(customer=customer, slug="bench")
    version = template.add_version("s", "h", "t")
    group = settings.MAILQ_RECORD_EVERY
    per_round = args.messages // args.rounds // group * group
    with_rollup = stats.with_rollup

    def without_rollup(update: str, *ctes: str) -> str:
        return (f"WITH {', '.join(ctes)} " if ctes else "") + update

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]

    def one_round(mode: str) -> dict:
        now = timezone.now()
        messages = [
            Message(
                id=uuid.uuid4(),
                customer=customer,
                template_version=version,
                to=["a@example.com"],
                from_email="b@example.com",
                queue="q",
                status=Status.SENDING,
                attempts=1,
                accepted_at=now,
                sending_at=now,
            )
            for _ in range(per_round)
        ]
        Message.objects.bulk_create(messages)
        stats.with_rollup = with_rollup if mode == "on" else without_rollup
        groups = []
        for start in range(0, per_round, group):
            done = timezone.now()
            outcomes = []
            for message in messages[start : start + group]:
                attempt = DeliveryAttempt(
                    message=message,
                    provider="smtp://bench",
                    started_at=done,
                    duration_ms=1.0,
                    succeeded=True,
                )
                outcomes.append(
                    sending.Outcome(message, Status.SENT, done, "smtp://bench", attempts=[attempt])
                )
            groups.append(outcomes)
        ticks, cpu, wall = _backend_ticks(backend), time.process_time(), time.perf_counter()
        for outcomes in groups:
            sending._record(outcomes)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        pg = (_backend_ticks(backend) - ticks) / TICK
        stats.with_rollup = with_rollup
        assert Message.objects.filter(status=Status.SENT).count() >= per_round
        return {
            "client_cpu_ms": cpu * 1000 / per_round,
            "pg_cpu_ms": pg * 1000 / per_round,
            "wall_ms": wall * 1000 / per_round,
        }

    results: dict[str, list[dict]] = {"off": [], "on": []}
    for index in range(args.rounds):
        order = ("off", "on") if index % 2 == 0 else ("on", "off")
        for mode in order:
            results[mode].append(one_round(mode))
    summary = {
        mode: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for mode, rounds in results.items()
    }
    print(f"{per_round * args.rounds} messages per mode in groups of {group}, {args.rounds} rounds")
    print(
        f"{'per message (median of rounds)':32} {'client CPU ms':>14} {'pg CPU ms':>10}"
        f" {'wall ms':>8}"
    )
    for mode in ("off", "on"):
        s = summary[mode]
        label = f"rollups {mode}"
        print(f"{label:32} {s['client_cpu_ms']:14.4f} {s['pg_cpu_ms']:10.4f} {s['wall_ms']:8.4f}")
    delta = {k: summary["on"][k] - summary["off"][k] for k in summary["on"]}
    print(
        f"{'difference':32} {delta['client_cpu_ms']:14.4f} {delta['pg_cpu_ms']:10.4f} "
        f"{delta['wall_ms']:8.4f}"
    )
    out = ROOT / "bench" / "results" / f"stats-overhead-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "delta": delta, "rounds": results}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
