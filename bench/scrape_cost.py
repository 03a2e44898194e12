"""Scrape cost: how long one /metrics scrape (or dashboard refresh) takes as a backlog grows.

    .venv/bin/python bench/scrape_cost.py [--backlogs 10000,100000,1000000] [--customers 50]

The state gauges are read at scrape time (delivery/snapshot.py): a fixed number of queries,
but the backlog query groups every deferred row per customer (the reconciler's own grouping).
This puts a backlog of each size in its own database `mailq_bench_scrape` (dropped and
recreated), split between one heavy customer and --customers light ones, plus a full window
of in-flight rows, and times `snapshot.take()` (PostgreSQL and RabbitMQ; vhost `mailq_bench_scrape`,
recreated) right after the insert (no visibility map yet: heap fetches, the worst case) and
after VACUUM (index-only scans). Prints milliseconds (median of --repeat) and writes JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime

import psycopg2
from stack import PG, ROOT, manage, reset_database, reset_vhost

DB, VHOST = "mailq_bench_scrape", "mailq_bench_scrape"

_INSERT_SQL = """
    INSERT INTO delivery_message (id, customer_id, template_version_id, "to", data, from_email,
        reply_to, request_hash, queue, status, attempts, accepted_at, queued_at, provider,
        last_error)
    SELECT gen_random_uuid(), %(customer)s, %(version)s, '["a@example.com"]', '{}',
           'x@example.com', '', '', 'mailq.premium', %(status)s, 0,
           now() - make_interval(secs => g / 1000.0),
           CASE WHEN %(status)s = 'queued' THEN now() END, '', ''
      FROM generate_series(1, %(count)s) g
"""


def child(repeat: int) -> dict:
    """In the bench environment: time snapshot.take()."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from delivery import snapshot

    snapshot.take()  # warm: connections, caches
    times, broker = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        snap = snapshot.take()
        times.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        snapshot._read_broker(snap.tiers)
        broker.append((time.perf_counter() - started) * 1000)
    assert snap.database_ok and snap.broker_ok
    backlog = sum(t.backlog for t in snap.tiers)
    return {
        "ms": statistics.median(times),
        "broker_ms": statistics.median(broker),
        "backlog_seen": backlog,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlogs", default="10000,100000,1000000")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.repeat)))
        return

    env = os.environ | {
        "DATABASE_URL": f"{PG}/{DB}",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        "DJANGO_SETTINGS_MODULE": "mailq.settings",
    }
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    rows = []
    with open(results_dir / f"scrape_cost-{stamp}.log", "w") as log:
        reset_vhost(VHOST)
        for size in (int(n) for n in args.backlogs.split(",")):
            reset_database(DB, env, log)
            code = (
                "from customers.models import Customer, Tier;"
                "from templates.models import EmailTemplate;"
                "premium = Tier.objects.get(name='premium');"
                f"cs = [Customer.objects.create(name=f'c{{i}}', tier=premium) "
                f"for i in range({args.customers + 1})];"
                "t = EmailTemplate.objects.create(customer=cs[0], slug='b');"
                "v = t.add_version('s', '', 't');"
                "print([c.pk for c in cs], v.pk)"
            )
            out = manage(env, log, "shell", "-c", code).strip().splitlines()[-1]
            ids_text, version = out.rsplit(" ", 1)
            customers = json.loads(ids_text)
            conn = psycopg2.connect(f"{PG}/{DB}")
            conn.autocommit = True
            with conn.cursor() as cur:
                light = max(size // 100 // max(args.customers, 1), 1)
                plan = [(customers[0], size - light * args.customers, "deferred")]
                plan += [(c, light, "deferred") for c in customers[1:]]
                plan += [(c, 20, "queued") for c in customers]  # a window each in flight
                for customer, count, status in plan:
                    cur.execute(
                        _INSERT_SQL,
                        {
                            "customer": customer,
                            "version": int(version),
                            "status": status,
                            "count": count,
                        },
                    )
                cur.execute("ANALYZE delivery_message")
            row = {"backlog": size}
            for phase in ("fresh", "vacuumed"):
                if phase == "vacuumed":
                    with conn.cursor() as cur:
                        cur.execute("VACUUM ANALYZE delivery_message")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--repeat", str(args.repeat)],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured = json.loads(out.stdout.strip().splitlines()[-1])
                assert measured["backlog_seen"] == size, measured
                row[f"{phase}_ms"] = measured["ms"]
                row[f"{phase}_broker_ms"] = measured["broker_ms"]
            conn.close()
            rows.append(row)
            print(
                f"backlog {size:>9,}: {row['fresh_ms']:8.1f} ms fresh, "
                f"{row['vacuumed_ms']:8.1f} ms vacuumed "
                f"(of which RabbitMQ {row['vacuumed_broker_ms']:.1f} ms)",
                flush=True,
            )
    out_path = results_dir / f"scrape_cost-{stamp}.json"
    out_path.write_text(json.dumps({"customers": args.customers, "rows": rows}, indent=2))
    print(f"written {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
