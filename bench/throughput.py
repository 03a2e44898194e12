"""Throughput benchmark: accept rate, delivery rate, latency and CPU per message, by process.

    .venv/bin/python bench/throughput.py [--quick] [--help for the phase sizes]

Starts its own stack on loopback (smtp-sink, gunicorn, one Celery pool) against the database
`mailq_bench` (dropped and recreated each run), RabbitMQ vhost `mailq_bench` and Redis db 2, runs:
  1. single POST /v1/messages from keep-alive clients for a fixed time (wrk, or Python threads);
  2. POST /v1/messages/batch (500 items) from a few clients;
  3. the pool drains what 1 and 2 accepted (one task per message, then batched tasks);
  4. a quiet customer: one message every 50 ms into the idle pool, accept->sent latency;
then prints a table and writes bench/results/throughput-<timestamp>.json.
Phases 1-2 measure the API alone: the workers run but their tier queue consumer is cancelled
(Celery remote control), and re-added at the start of phase 3, so no start-up cost is counted.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

import psycopg2
from celery import Celery

# Run as a script, bench/ is on sys.path, so the helper module imports by its bare name.
from stack import (
    PG,
    ROOT,
    Client,
    Stack,
    cpu_snapshot,
    ensure_tools,
    free_port,
    machine_busy,
    manage,
    pct,
    queue_depth,
    reset_database,
    reset_vhost,
    run_threads,
    run_wrk,
    top_other,
    wait_until,
)

DB, VHOST = "mailq_bench", "mailq_bench"
GROUPS = ["web", "workers", "postgres", "rabbitmq", "sink", "loadgen"]
TEMPLATE = {
    "slug": "bench",
    "subject": "Hello {{ name }}",
    "html": "<p>Hi {{ name }}</p>",
    "text": "Hi {{ name }}",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~30 s smoke run (small phases)")
    p.add_argument("--tier", default="standard", help="bench customer's tier (its pool runs)")
    p.add_argument("--single-seconds", type=float, default=15, help="phase 1 length; 0 skips")
    p.add_argument("--clients", type=int, default=8, help="phase 1 concurrent connections")
    p.add_argument("--batch-messages", type=int, default=20_000, help="phase 2 total; 0 skips")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--batch-clients", type=int, default=2)
    p.add_argument("--quiet-seconds", type=float, default=10, help="phase 4 length; 0 skips")
    p.add_argument("--quiet-interval", type=float, default=0.05)
    p.add_argument("--drain-timeout", type=float, default=150)
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=0, help="0: the tier's default")
    p.add_argument("--worker-loglevel", default="INFO", help="INFO as in the Procfile")
    p.add_argument("--no-access-log", action="store_true", help="gunicorn without access log")
    p.add_argument("--task-events", action="store_true", help="MAILQ_TASK_EVENTS=1")
    p.add_argument("--python-loadgen", action="store_true", help="phase 1 without wrk")
    p.add_argument(
        "--routing",
        default="fifo",
        choices=["fifo", "fair"],
        help="MAILQ_ROUTING; fifo (default) so that phase 3a is one task per message as labelled"
        " (fair would hold most singles back and release them in chunks)",
    )
    p.add_argument("--wait-idle", type=float, default=30, help="max s to wait for a quiet CPU")
    args = p.parse_args()
    if args.quick:
        args.single_seconds, args.batch_messages, args.quiet_seconds = 3, 2_000, 3
        args.drain_timeout = 60
    return args


def item(i: int, tag: str) -> dict:
    # data.bench tags each phase's messages, so their latency is one SQL query away.
    return {
        "template": "bench",
        "to": f"user{i}@example.com",
        "data": {"name": f"U{i}", "bench": tag},
    }


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, client: Client, db, control) -> None:
        self.args, self.stack, self.client, self.db, self.control = args, stack, client, db, control
        self.results: dict[str, dict] = {}

    def sql(self, query: str, *params) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def snapshot(self) -> dict:
        """CPU per group, and how many PostgreSQL sessions the bench database has seen."""
        query = "SELECT sessions FROM pg_stat_database WHERE datname = %s"
        return cpu_snapshot(self.stack, DB) | {"pg_sessions": self.sql(query, DB)[0][0]}

    def settled_count(self, tag: str) -> int:
        """A phase's rows, once requests still in flight when the load stopped have landed."""
        last = -1
        for _ in range(20):
            (n,), *_ = self.sql(
                "SELECT count(*) FROM delivery_message WHERE data->>'bench' = %s", tag
            )
            if n == last:
                break
            last = n
            time.sleep(0.5)
        return last

    def stats(self, *tags: str) -> dict:
        """Counts and accept->sent / claim->sent percentiles, in SQL, for tagged messages."""
        (row,) = self.sql(
            """SELECT count(*), count(*) FILTER (WHERE status = 'sent'),
                      extract(epoch FROM min(sent_at)), extract(epoch FROM max(sent_at)),
                      percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                          (ORDER BY extract(epoch FROM sent_at - accepted_at)),
                      percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                          (ORDER BY extract(epoch FROM sent_at - sending_at)),
                      extract(epoch FROM max(sent_at - accepted_at))
                 FROM delivery_message WHERE data->>'bench' = ANY(%s)""",
            list(tags),
        )
        n, sent, first, last, acc, claim, acc_max = row
        ms = lambda v: round(float(v) * 1000, 1) if v is not None else None  # noqa: E731
        return {
            "messages": n,
            "sent": sent,
            "first_sent": float(first) if first else None,
            "last_sent": float(last) if last else None,
            "accept_sent_p50_ms": ms(acc and acc[0]),
            "accept_sent_p99_ms": ms(acc and acc[1]),
            "accept_sent_max_ms": ms(acc_max),
            "claim_sent_p50_ms": ms(claim and claim[0]),
            "claim_sent_p99_ms": ms(claim and claim[1]),
        }

    def record(self, name: str, result: dict, before: dict, after: dict, messages: int) -> None:
        cpu = {g: round(after.get(g, 0) - before.get(g, 0), 3) for g in GROUPS}
        cpu["total"] = round(sum(cpu.values()), 3)
        # Busy time no group explains: other load on the machine (it skews every figure).
        cpu["other"] = round(after["machine"] - before["machine"] - cpu["total"], 3)
        result["other_cpu_s"] = [("irq", round(after["irq"] - before["irq"], 2))]
        result["other_cpu_s"] += top_other(before, after)
        result["cpu_s"] = cpu
        # New connections (backend fork + SCRAM auth each): should stay near 0 per message.
        result["pg_sessions"] = after["pg_sessions"] - before["pg_sessions"]
        result["cpu_ms_per_msg"] = {
            g: round(1000 * s / messages, 3) if messages else None for g, s in cpu.items()
        }
        self.results[name] = result

    # --- phase 1 ---------------------------------------------------------------------------
    def single(self) -> None:
        a = self.args
        body = json.dumps(item(0, "p1"))
        use_wrk = shutil.which("wrk") and not a.python_loadgen
        before = self.snapshot()
        if use_wrk:
            url = f"http://127.0.0.1:{self.client.port}/v1/messages"
            run = run_wrk(url, self.client.headers, body, a.clients, a.single_seconds)
        else:
            run = run_threads(
                self.client, "/v1/messages", body.encode(), a.clients, a.single_seconds
            )
        accepted = self.settled_count("p1")
        after = self.snapshot()
        run |= {"accepted": accepted, "loadgen": "wrk" if use_wrk else "python threads"}
        run["msg_per_s"] = round((run["requests"] - run["errors"]) / run["seconds"], 1)
        name = f"1 single POST ({'wrk' if use_wrk else 'py'} c={a.clients})"
        self.record(name, run, before, after, accepted)

    # --- phase 2 ---------------------------------------------------------------------------
    def batch(self) -> None:
        a = self.args
        requests = -(-a.batch_messages // a.batch_size)
        bodies = [
            json.dumps(
                {"messages": [item(r * a.batch_size + i, "p2") for i in range(a.batch_size)]}
            ).encode()
            for r in range(requests)
        ]
        latencies: list[float] = []
        accepted, errors, lock = [0], [0], threading.Lock()

        def loop(mine: list[bytes]) -> None:
            for body in mine:
                status, answer, seconds = self.client.post("/v1/messages/batch", body)
                with lock:
                    latencies.append(seconds)
                    accepted[0] += (answer or {}).get("accepted", 0) if status == 202 else 0
                    errors[0] += status != 202 or bool((answer or {}).get("rejected"))

        before = self.snapshot()
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=loop, args=(bodies[i :: a.batch_clients],))
            for i in range(a.batch_clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        after = self.snapshot()
        result = {
            "requests": requests,
            "seconds": round(seconds, 2),
            "accepted": accepted[0],
            "errors": errors[0],
            "msg_per_s": round(accepted[0] / seconds, 1),
            "req_per_s": round(requests / seconds, 2),
            "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
            "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        }
        self.record(
            f"2 batch POST ({a.batch_size}/req, c={a.batch_clients})",
            result,
            before,
            after,
            accepted[0],
        )

    # --- phase 3 ---------------------------------------------------------------------------
    def drain(self, queue: str) -> None:
        """Re-add the pool's consumer and time the backlog: singles first (FIFO), then batches."""
        singles = self.stats("p1")["messages"]
        total = singles + self.stats("p2")["messages"]
        if not total:
            return
        tasks = queue_depth(VHOST, queue)
        before, t0 = self.snapshot(), time.time()
        self.control.add_consumer(queue, reply=True, timeout=10, limit=1)
        split = before if singles == 0 else None
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline and self.stack.sink_count() < total:
            if split is None and self.stack.sink_count() >= singles:
                split = self.snapshot()
            time.sleep(0.1)
        # The row is marked sent just after the SMTP reply: wait for the last writes.
        wait_until(
            lambda: (
                not self.sql(
                    "SELECT 1 FROM delivery_message WHERE status IN ('queued', 'sending') LIMIT 1"
                )
            ),
            15,
        )
        after = self.snapshot()
        split = split or after
        for name, tag, lo, hi in (
            ("3a drain singles (1 msg/task)", "p1", before, split),
            ("3b drain batches (n msgs/task)", "p2", split, after),
        ):
            s = self.stats(tag)
            if not s["messages"]:
                continue
            span = (s["last_sent"] or 0) - (s["first_sent"] or 0)
            s["msg_per_s"] = round(s["sent"] / span, 1) if span > 0 else None
            self.record(name, s, lo, hi, s["sent"])
        s = self.stats("p1", "p2")
        s["broker_tasks_approx"] = tasks  # management API statistics lag by up to 5 s
        s["wall_s"] = round((s["last_sent"] or t0) - t0, 2)
        s["msg_per_s"] = round(s["sent"] / s["wall_s"], 1) if s["wall_s"] > 0 else None
        s["timed_out"] = s["sent"] < total
        self.record("3 drain all (worker start -> last sent)", s, before, after, s["sent"])

    # --- phase 4 ---------------------------------------------------------------------------
    def quiet(self) -> None:
        a = self.args
        n = int(a.quiet_seconds / a.quiet_interval)
        latencies, errors = [], 0
        before, t0 = self.snapshot(), time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i * a.quiet_interval - time.monotonic()))
            status, _, seconds = self.client.post(
                "/v1/messages", json.dumps(item(i, "p4")).encode()
            )
            latencies.append(seconds)
            errors += status != 202
        wait_until(lambda: self.stats("p4")["sent"] >= n - errors, 15, 0.2)
        after = self.snapshot()
        s = self.stats("p4") | {
            "errors": errors,
            "interval_ms": a.quiet_interval * 1000,
            "post_p50_ms": round(pct(latencies, 0.5) * 1000, 1),
            "post_p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        }
        self.record(
            f"4 quiet customer (1 msg / {a.quiet_interval * 1000:.0f} ms)",
            s,
            before,
            after,
            s["sent"],
        )


def print_report(results: dict[str, dict], config: dict) -> None:
    print("\n" + "  ".join(f"{k}={v}" for k, v in config.items()))
    cols = ["messages", "msg/s", "p50 ms", "p99 ms", "errors", "pg conns"]
    print(f"\n{'phase':42}" + "".join(f"{c:>10}" for c in cols))
    for name, r in results.items():
        n = r.get("accepted", r.get("sent"))
        p50 = r.get("p50_ms", r.get("accept_sent_p50_ms"))
        p99 = r.get("p99_ms", r.get("accept_sent_p99_ms"))
        errs = r.get("errors", (r.get("messages", 0) - r.get("sent", 0)) if "sent" in r else "")
        cells = [n, r.get("msg_per_s"), p50, p99, errs, r["pg_sessions"]]
        print(f"{name:42}" + "".join(f"{'-' if c is None else c:>10}" for c in cells))
    print("(1-2: HTTP request latency. 3-4: accept->sent from the database; in 3 it includes")
    print(" the wait while 1-2 ran. msg/s: 3a/3b first->last sent_at, 3 pool start->last sent.")
    print(" pg conns: new PostgreSQL sessions to the bench database during the phase)")
    print(f"\n{'CPU ms per message':42}" + "".join(f"{g:>9}" for g in [*GROUPS, "total", "other"]))
    for name, r in results.items():
        cells = [r["cpu_ms_per_msg"].get(g) for g in [*GROUPS, "total", "other"]]
        print(f"{name:42}" + "".join(f"{'-' if c is None else f'{c:.3f}':>9}" for c in cells))
    print("(loadgen: wrk or this script's threads/poller; other: busy CPU of no listed group)")
    other = sum(max(0.0, r["cpu_s"]["other"]) for r in results.values())
    ours = sum(r["cpu_s"]["total"] for r in results.values())
    if other > 0.2 * ours:
        print(f"WARNING: other processes used {other:.1f} CPU-s against our {ours:.1f}: the")
        print("machine was shared during the run, so rates are low and latencies high.")
        for name, r in results.items():
            top = ", ".join(f"{k} {v}" for k, v in r["other_cpu_s"])
            print(f"  phase {name.split()[0]:>2}, other CPU-s: {top}")
    sent, attempts, received = config["sent"], config["attempts"], config["sink_received"]
    once = "yes" if sent == attempts == received else "NO"
    print(f"exactly once: {once} ({sent} sent, {attempts} attempts, {received} at smtp-sink)")


def main() -> int:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = ROOT / "bench" / "results"
    log_dir = results_dir / f"throughput-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sink_port, web_port = free_port(), free_port()
    env = os.environ | {
        "DATABASE_URL": f"{PG}/{DB}",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        "REDIS_URL": "redis://127.0.0.1:6379/2",
        "MAILQ_PROVIDERS": f"smtp://127.0.0.1:{sink_port}",
        "MAILQ_TASK_EVENTS": "1" if args.task_events else "0",
        "MAILQ_ROUTING": args.routing,
        # Throttling is measured by bench/throttle_overhead.py; here it would only cap the load.
        "MAILQ_THROTTLING": "0",
        # The express lane is fair share's; this benchmark runs only the tier pool.
        "MAILQ_EXPRESS_INFLIGHT": "0",
        "DJANGO_SETTINGS_MODULE": "mailq.settings",
        "PYTHONUNBUFFERED": "1",
    }
    stack = Stack(env, log_dir)
    control = Celery(broker=env["CELERY_BROKER_URL"]).control
    with open(log_dir / "setup.log", "w") as log:
        print(f"setting up: database {DB}, vhost {VHOST}, redis db 2 (logs: {log_dir})")
        ensure_tools(log)
        reset_vhost(VHOST)
        reset_database(DB, env, log)
        subprocess.run(["redis-cli", "-n", "2", "flushdb"], stdout=log, check=False)
        key = manage(env, log, "create_customer", f"bench-{stamp}", "--tier", args.tier)
        key = key.strip().splitlines()[-1]
    db = psycopg2.connect(f"{PG}/{DB}")
    db.autocommit = True
    try:
        stack.start_sink(sink_port)
        stack.start_web(web_port, args.web_workers, not args.no_access_log)
        with db.cursor() as cur:
            cur.execute(
                "SELECT queue, pool_weight FROM customers_tier WHERE name = %s", [args.tier]
            )
            queue, weight = cur.fetchone()
        concurrency = args.worker_concurrency or weight * int(
            env.get("MAILQ_WORKERS_PER_WEIGHT", 1)
        )
        stack.start_workers(args.tier, concurrency, args.worker_loglevel)
        if not wait_until(lambda: bool(control.ping(timeout=0.5, limit=1)), 60, 0.5):
            raise RuntimeError(f"the worker pool did not answer; see {log_dir}/workers.log")
        # Keep the warm pool but stop it consuming: phases 1-2 measure the API alone.
        control.cancel_consumer(queue, reply=True, timeout=10, limit=1)
        client = Client(web_port, key)
        status, answer, _ = client.post("/v1/templates", json.dumps(TEMPLATE).encode())
        if status != 201:
            raise RuntimeError(f"creating the template failed: {status} {answer}")
        bench = Bench(args, stack, client, db, control)
        config = {
            "tier": args.tier,
            "queue": queue,
            "web_workers": args.web_workers,
            "pool_concurrency": concurrency,
            "task_events": args.task_events,
            "routing": args.routing,
            "worker_loglevel": args.worker_loglevel,
            "access_log": not args.no_access_log,
            "pool_in_phases_1_2": "running, tier queue consumer cancelled",
            "cpus": os.cpu_count(),
        }
        # Other load skews every figure: give a concurrent test run a chance to finish.
        deadline = time.monotonic() + args.wait_idle
        while (busy := machine_busy()) > 0.25 and time.monotonic() < deadline:
            print(f"waiting for a quieter machine ({busy:.0%} busy)", flush=True)
        config["busy_before_pct"] = round(100 * busy, 1)
        print("running: " + ", ".join(f"{k}={v}" for k, v in config.items()))
        if args.single_seconds > 0:
            bench.single()
        if args.batch_messages > 0:
            bench.batch()
        bench.drain(queue)
        if args.quiet_seconds > 0:
            bench.quiet()
        ((sent, attempts),) = bench.sql(
            "SELECT (SELECT count(*) FROM delivery_message WHERE status = 'sent'),"
            " (SELECT count(*) FROM delivery_deliveryattempt)"
        )
        config |= {"sent": sent, "attempts": attempts, "sink_received": stack.sink_count()}
    finally:
        db.close()
        stack.stop_all()
    print_report(bench.results, config)
    out = results_dir / f"throughput-{stamp}.json"
    out.write_text(
        json.dumps(
            {"started": stamp, "args": vars(args), "config": config, "phases": bench.results},
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
