"""Failover: when the primary provider fails, how long until mail flows through the secondary,
and what does a steady stream's accept->sent latency do during the switch?

    .venv/bin/python bench/failover.py [--modes error,slow] [--fail-at 10] [--help]

Each mode runs on a fresh stack: smtp-sink (the secondary), gunicorn, the tier's worker pool, the
express lane, the maintenance worker and beat, against database `mailq_bench_failover`, vhost
`mailq_bench_failover` and Redis db 6. The primary is Postmark, played by a local HTTP server
speaking its API (tests/fake_esp.py) inside this process. One customer sends `--rate` messages/s
for `--duration` s; at `--fail-at` s the primary starts failing (`error`: HTTP 500 at once;
`slow`: holds each request past the provider's `--timeout`), and at `--recover-at` s it answers
again. The script polls the breaker in Redis, and reads every figure from the message rows:
  breaker open      s from the failure until the primary's breaker was open
  first secondary   s from the failure until the first message sent through the secondary
  primary failures  attempts paid on the failing primary (each one a failover within its task)
  p50/p99/max       accept->sent of messages accepted before the failure, during the switch
                    (the first `--switch-window` s after it), after it, and after the recovery
  closed again      s from the recovery until the breaker closed (the probe after the cool-down)
JSON goes to bench/results/.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime

import psycopg2
import redis
from stack import (
    PG,
    ROOT,
    Client,
    Stack,
    create_customers,
    ensure_tools,
    free_port,
    reset_database,
    reset_vhost,
    stack_env,
    wait_until,
)

sys.path.insert(0, str(ROOT))
from tests.fake_esp import ERROR, OK, SLOW, FakeEsp

DB = VHOST = "mailq_bench_failover"
REDIS_DB, TIER = 6, "standard"
MODES = {"error": ERROR, "slow": SLOW}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modes", default="error,slow", help="how the primary fails: error, slow")
    p.add_argument("--rate", type=float, default=40.0, help="messages/s sent, one at a time")
    p.add_argument("--duration", type=float, default=40.0, help="s of steady traffic")
    p.add_argument("--fail-at", type=float, default=10.0, help="s into the run the primary fails")
    p.add_argument("--recover-at", type=float, default=25.0, help="s into the run it recovers")
    p.add_argument("--switch-window", type=float, default=3.0, help="s after the failure")
    p.add_argument(
        "--warmup", type=float, default=5.0, help="first s left out of `before` (first connections)"
    )
    p.add_argument("--timeout", type=float, default=1.0, help="the primary's HTTP timeout, s")
    p.add_argument("--fail-max", type=int, default=5, help="MAILQ_BREAKER_FAIL_MAX")
    p.add_argument("--reset", type=float, default=5.0, help="MAILQ_BREAKER_RESET_SECONDS")
    return p.parse_args()


class Run:
    def __init__(self, args, mode: str, stamp: str) -> None:
        self.args, self.mode = args, mode
        self.log_dir = ROOT / "bench" / "results" / f"failover-{stamp}-logs" / mode
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.errors = 0
        self.marks: dict[str, float] = {}  # event -> wall-clock time

    def run(self) -> dict:
        sink_port, web_port = free_port(), free_port()
        with FakeEsp("postmark", delay=self.args.timeout * 3) as fake:
            primary = fake.provider_url(timeout=self.args.timeout)
            env = stack_env(
                DB,
                VHOST,
                REDIS_DB,
                f"{primary},smtp://127.0.0.1:{sink_port}",
                MAILQ_BREAKER_FAIL_MAX=str(self.args.fail_max),
                MAILQ_BREAKER_RESET_SECONDS=str(self.args.reset),
            )
            with open(self.log_dir / "setup.log", "w") as log:
                reset_vhost(VHOST)
                reset_database(DB, env, log)
                redis.Redis(db=REDIS_DB).flushdb()
                key = create_customers(env, log, TIER, ["steady"])["steady"]
            stack = Stack(env, self.log_dir)
            db = psycopg2.connect(f"{PG}/{DB}")
            db.autocommit = True
            try:
                stack.start_mailq(TIER, sink_port, web_port)
                return self._measure(db, stack, fake, Client(web_port, key))
            finally:
                self.stop.set()
                stack.stop_all()
                db.close()

    def _measure(self, db, stack: Stack, fake: FakeEsp, client: Client) -> dict:
        name = f"postmark://{fake.base_url.split('//')[1].rstrip('/')}"
        watcher = threading.Thread(target=self._watch_breaker, args=(name,), daemon=True)
        sender = threading.Thread(target=self._send, args=(client,), daemon=True)
        t0 = self.marks["start"] = time.time()
        watcher.start()
        sender.start()
        for at, event, mode in (
            (self.args.fail_at, "fail", MODES[self.mode]),
            (self.args.recover_at, "recover", OK),
        ):
            time.sleep(max(0.0, t0 + at - time.time()))
            fake.set_mode(mode)
            self.marks[event] = time.time()
            print(f"    {at:5.1f} s: primary {event}s", flush=True)
        sender.join()
        self.marks["end"] = time.time()
        all_sent = wait_until(lambda: self._sql(db, UNSENT)[0][0] == 0, 60, 0.5)
        time.sleep(0.5)
        self.stop.set()
        watcher.join(5)
        return self._report(db, stack, fake, name, all_sent)

    def _send(self, client: Client) -> None:
        """One message every 1/rate s, on schedule (a late send does not shift the next)."""
        interval, n = 1.0 / self.args.rate, 0
        start = time.monotonic()
        while time.monotonic() - start < self.args.duration:
            body = {"template": "note", "to": f"user{n}@example.com", "data": {"name": f"U{n}"}}
            status, _, _ = client.post("/v1/messages", json.dumps(body).encode())
            self.errors += status != 202
            n += 1
            time.sleep(max(0.0, start + n * interval - time.monotonic()))

    def _watch_breaker(self, name: str) -> None:
        """Note when the primary's breaker first opens after the failure, and closes after."""
        client = redis.Redis(db=REDIS_DB)
        key = f"mailq:breaker:{name}:pybreaker:state"
        while not self.stop.wait(0.02):
            state = (client.get(key) or b"closed").decode()
            if state == "open" and "fail" in self.marks and "opened" not in self.marks:
                self.marks["opened"] = time.time()
            if state == "closed" and "recover" in self.marks and "closed" not in self.marks:
                self.marks["closed"] = time.time()

    @staticmethod
    def _sql(db, query: str, *params) -> list[tuple]:
        with db.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _latency(self, db, since: float, until: float) -> dict:
        count, pcts, worst = self._sql(db, LATENCY, since, until)[0]
        ms = lambda v: None if v is None else round(float(v) * 1000, 1)  # noqa: E731
        pcts = pcts or [None, None]
        return {"n": count, "p50_ms": ms(pcts[0]), "p99_ms": ms(pcts[1]), "max_ms": ms(worst)}

    def _report(self, db, stack: Stack, fake: FakeEsp, name: str, all_sent: bool) -> dict:
        m, a = self.marks, self.args
        fail, recover = m["fail"], m["recover"]
        first_secondary = self._sql(
            db,
            "SELECT extract(epoch FROM min(sent_at)) FROM delivery_message"
            " WHERE provider LIKE 'smtp://%%' AND sent_at >= to_timestamp(%s)",
            fail,
        )[0][0]
        failures = self._sql(
            db,
            "SELECT count(*) FROM delivery_deliveryattempt WHERE provider = %s AND NOT succeeded",
            name,
        )[0][0]
        accepted, sent, attempts_ok = self._sql(db, TOTALS)[0]
        first_secondary = float(first_secondary) - fail if first_secondary else None
        delivered = stack.sink_count() + len(fake.received)
        return {
            "mode": self.mode,
            "breaker_open_s": round(m["opened"] - fail, 2) if "opened" in m else None,
            "first_secondary_s": first_secondary and round(first_secondary, 3),
            "primary_failures": failures,
            "before": self._latency(db, m["start"] + a.warmup, fail),
            "switch": self._latency(db, fail, fail + a.switch_window),
            "after": self._latency(db, fail + a.switch_window, recover),
            "recovered": self._latency(db, recover, m["end"]),
            "closed_again_s": round(m["closed"] - recover, 2) if "closed" in m else None,
            "accepted": accepted,
            "sent": sent,
            "received": delivered,  # by the sink and the fake primary together
            "duplicates": delivered - sent,
            "sent_equals_successful_attempts": sent == attempts_ok,
            "all_sent": all_sent,
            "errors": self.errors,
        }


UNSENT = "SELECT count(*) FROM delivery_message WHERE status <> 'sent'"
LATENCY = """
    SELECT count(*),
           percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
               (ORDER BY extract(epoch FROM sent_at - accepted_at)),
           extract(epoch FROM max(coalesce(sent_at, now()) - accepted_at))
      FROM delivery_message
     WHERE accepted_at >= to_timestamp(%s) AND accepted_at < to_timestamp(%s)
"""
TOTALS = """
    SELECT (SELECT count(*) FROM delivery_message),
           (SELECT count(*) FROM delivery_message WHERE status = 'sent'),
           (SELECT count(*) FROM delivery_deliveryattempt WHERE succeeded)
"""


def print_table(results: list[dict]) -> None:
    head = ["mode", "breaker open", "1st secondary", "primary fails", "closed again"]
    print("\n" + "  ".join(f"{c:>14}" for c in head))
    for r in results:
        cells = [r["mode"], r["breaker_open_s"], r["first_secondary_s"], r["primary_failures"]]
        print("  ".join(f"{c!s:>14}" for c in [*cells, r["closed_again_s"]]))
    print("\naccept->sent ms (n, p50 / p99 / max) by when the message was accepted")
    phases = ["before", "switch", "after", "recovered"]
    print(f"{'mode':>6}  " + "  ".join(f"{p:>28}" for p in phases))
    for r in results:
        cells = [
            f"{r[p]['n']}: {r[p]['p50_ms']} / {r[p]['p99_ms']} / {r[p]['max_ms']}" for p in phases
        ]
        print(f"{r['mode']:>6}  " + "  ".join(f"{c:>28}" for c in cells))
    for r in results:
        print(
            f"{r['mode']:>6}: accepted {r['accepted']}, sent {r['sent']},"
            f" duplicates {r['duplicates']} (received {r['received']}), errors {r['errors']}"
        )


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.devnull, "w") as devnull:
        ensure_tools(devnull)
    results = []
    for mode in args.modes.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] primary fails with {mode}", flush=True)
        result = Run(args, mode, stamp).run()
        print(f"    {json.dumps(result)}", flush=True)
        results.append(result)
    print_table(results)
    out = ROOT / "bench" / "results" / f"failover-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
