"""Throttle overhead: POST /v1/messages with throttling off and on, side by side in one run.

    .venv/bin/python bench/throttle_overhead.py [--quick] [--help]

Starts gunicorn (2 sync workers as in the Procfile, access log off) against its own database
`mailq_bench_thr` (dropped and recreated), RabbitMQ vhost `mailq_bench_thr` and Redis db 4, so
neither a dev stack nor bench/noisy_neighbour.py is disturbed. Each round restarts gunicorn with
MAILQ_THROTTLING=0 or 1, warms it up, then loads `POST /v1/messages` from keep-alive clients
(wrk, or Python threads) and reads the web processes' CPU. Rounds alternate off/on, so drift
(the message table growing, other load on the machine) hits both modes alike; each mode's figure
is its median round.

The bench customer is on the premium tier (2,000 msg/s, bursts of 200,000), so nothing is
refused: this measures what the check costs on every request, not what refusing saves. No
worker pool runs; messages past the customer's in-flight cap are stored deferred, the same way
in both modes. At the end the script checks that usage was counted exactly once per message.
Each round has two phases: --clients connections for --seconds (throughput, and p50/p99 at
saturation, where latency is mostly queueing), then one connection for half as long (p50/p99
of a request alone: what throttling adds to a request's latency).
Bar (issue #4): throttling costs at most 10 % of throughput and 1 ms at p50 (one connection).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime

import psycopg2

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
    reset_database,
    reset_vhost,
    run_threads,
    run_wrk,
)

DB, VHOST, REDIS_DB = "mailq_bench_thr", "mailq_bench_thr", 4
TEMPLATE = {"slug": "bench", "subject": "Hi {{ name }}", "text": "Hi {{ name }}"}
BODY = json.dumps({"template": "bench", "to": "user@example.com", "data": {"name": "U"}})
MODES = {"off": "0", "on": "1"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round per mode (~30 s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternating)")
    p.add_argument("--seconds", type=float, default=12, help="load per round")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured load before each round")
    p.add_argument("--clients", type=int, default=8, help="concurrent connections")
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--python-loadgen", action="store_true", help="Python threads, not wrk")
    p.add_argument("--wait-idle", type=float, default=60, help="max s to wait for a quiet CPU")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 5, 1
    return args


def load(args, client: Client, seconds: float, clients: int) -> dict:
    if shutil.which("wrk") and not args.python_loadgen:
        url = f"http://127.0.0.1:{client.port}/v1/messages"
        return run_wrk(url, client.headers, BODY, clients, seconds)
    return run_threads(client, "/v1/messages", BODY.encode(), clients, seconds)


def run_round(args, stack: Stack, key: str, mode: str) -> dict:
    """One gunicorn start in `mode`: warm-up, measured load, CPU of the web processes."""
    stack.env["MAILQ_THROTTLING"] = MODES[mode]
    port = free_port()
    stack.start_web(port, args.web_workers, access_log=False)
    client = Client(port, key)
    try:
        status, _, _ = client.post("/v1/messages", BODY.encode())
        if status != 202:
            raise RuntimeError(f"a send answered {status}; see {stack.procs['web'].log}")
        load(args, client, args.warmup, args.clients)
        before = cpu_snapshot(stack, DB)
        run = load(args, client, args.seconds, args.clients)
        after = cpu_snapshot(stack, DB)
        # One connection (Python's http.client; wrk needs one per thread): no queueing, so
        # p50 is what a request costs the server.
        alone = run_threads(client, "/v1/messages", BODY.encode(), 1, args.seconds / 2)
    finally:
        stack.procs.pop("web").stop()
    ok = run["requests"] - run["errors"]
    run["mode"] = mode
    run["c1_p50_ms"], run["c1_p99_ms"] = alone["p50_ms"], alone["p99_ms"]
    run["errors"] += alone["errors"]
    run["ok_per_s"] = round(ok / run["seconds"], 1)
    for group, name in (("web", "web"), ("postgres", "pg")):
        used = after[group] - before[group]
        run[f"{name}_cpu_ms_per_req"] = round(1000 * used / max(ok, 1), 3)
    # Busy CPU of the machine that none of ours explains (Redis is in it): when large, another
    # job shared the machine during the round.
    ours = sum(after[g] - before[g] for g in ("web", "postgres", "rabbitmq", "loadgen"))
    run["other_cpu_s"] = round(after["machine"] - before["machine"] - ours, 2)
    return run


def summarise(rounds: list[dict]) -> dict[str, dict]:
    keys = ["ok_per_s", "p50_ms", "p99_ms", "web_cpu_ms_per_req", "pg_cpu_ms_per_req"]
    keys += ["c1_p50_ms", "c1_p99_ms"]
    summary = {}
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {k: round(statistics.median(r[k] for r in mine), 3) for k in keys}
        summary[mode]["errors"] = sum(r["errors"] for r in mine)
        summary[mode]["requests"] = sum(r["requests"] for r in mine)
    return summary


def print_report(config: dict, rounds: list[dict], summary: dict, checks: dict) -> dict:
    print("\n" + "  ".join(f"{k}={v}" for k, v in config.items()))
    c = config["clients"]
    cols = ["req/s", f"c{c} p50", f"c{c} p99", "c1 p50", "c1 p99", "web CPU", "pg CPU", "errors"]
    fields = ["ok_per_s", "p50_ms", "p99_ms", "c1_p50_ms", "c1_p99_ms"]
    fields += ["web_cpu_ms_per_req", "pg_cpu_ms_per_req", "errors"]
    print(f"\n{'round':14}" + "".join(f"{c:>10}" for c in [*cols, "other s"]))
    for i, r in enumerate(rounds, 1):
        label = f"{i} {r['mode']}"
        print(f"{label:14}" + "".join(f"{r[f]:>10}" for f in [*fields, "other_cpu_s"]))
    print(f"\n{'median':14}" + "".join(f"{c:>10}" for c in cols))
    for mode, s in summary.items():
        print(f"{'throttle ' + mode:14}" + "".join(f"{s[f]:>10}" for f in fields))
    print("(latencies in ms; CPU in ms per request; c1: one connection, no queueing;")
    print(" other s: machine CPU-seconds no process of ours explains, Redis included)")
    off, on = summary["off"], summary["on"]
    cost_pct = 100 * (off["ok_per_s"] - on["ok_per_s"]) / off["ok_per_s"]
    p50_ms = on["c1_p50_ms"] - off["c1_p50_ms"]
    queued_p50_ms = on["p50_ms"] - off["p50_ms"]
    cpu_ms = on["web_cpu_ms_per_req"] - off["web_cpu_ms_per_req"]
    verdict = {
        "throughput_cost_pct": round(cost_pct, 1),
        "p50_cost_ms": round(p50_ms, 2),
        "p50_cost_ms_saturated": round(queued_p50_ms, 2),
        "web_cpu_cost_ms": round(cpu_ms, 3),
        "throughput_ok": cost_pct <= 10,
        "p50_ok": p50_ms <= 1.0,
    }
    print(f"\nthrottling costs {cost_pct:.1f} % of throughput (bar 10 %): ", end="")
    print("PASS" if verdict["throughput_ok"] else "FAIL")
    print(f"throttling adds {p50_ms:.2f} ms at p50, one connection (bar 1 ms): ", end="")
    print("PASS" if verdict["p50_ok"] else "FAIL")
    print(
        f"  (at saturation, {c} connections, p50 moves {queued_p50_ms:+.2f} ms: queueing, "
        "i.e. the throughput cost times the queue length)"
    )
    print(f"web CPU per request: +{cpu_ms:.3f} ms with throttling on")
    print(
        f"usage counted exactly once: {'yes' if checks['usage_exact'] else 'NO'} "
        f"({checks['messages']} messages stored, usage rows sum to {checks['usage']})"
    )
    if config["busy_before_pct"] > 25:
        print("WARNING: the machine was busy before the run; figures are skewed.")
    return verdict


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally stops gunicorn
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = ROOT / "bench" / "results"
    log_dir = results_dir / f"throttle-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "DATABASE_URL": f"{PG}/{DB}",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "MAILQ_PROVIDERS": "console://",
        "MAILQ_TASK_EVENTS": "0",
        "DJANGO_SETTINGS_MODULE": "mailq.settings",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_dir / "setup.log", "w") as log:
        print(f"setting up: database {DB}, vhost {VHOST}, redis db {REDIS_DB} (logs: {log_dir})")
        ensure_tools(log)
        reset_vhost(VHOST)
        reset_database(DB, env, log)
        subprocess.run(["redis-cli", "-n", str(REDIS_DB), "flushdb"], stdout=log, check=False)
        key = manage(env, log, "create_customer", f"bench-{stamp}", "--tier", "premium")
        key = key.strip().splitlines()[-1]
    stack = Stack(dict(env), log_dir)
    rounds: list[dict] = []
    try:
        port = free_port()
        stack.start_web(port, 1, access_log=False)
        status, answer, _ = Client(port, key).post("/v1/templates", json.dumps(TEMPLATE).encode())
        stack.procs.pop("web").stop()
        if status != 201:
            raise RuntimeError(f"creating the template failed: {status} {answer}")
        deadline = time.monotonic() + args.wait_idle
        while (busy := machine_busy()) > 0.25 and time.monotonic() < deadline:
            print(f"waiting for a quieter machine ({busy:.0%} busy)", flush=True)
        config = {
            "rounds_per_mode": args.rounds,
            "seconds": args.seconds,
            "clients": args.clients,
            "web_workers": args.web_workers,
            "loadgen": "wrk" if shutil.which("wrk") and not args.python_loadgen else "threads",
            "tier": "premium",
            "cpus": os.cpu_count(),
            "busy_before_pct": round(100 * busy, 1),
        }
        print("running: " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)
        for _ in range(args.rounds):
            for mode in MODES:
                rounds.append(run_round(args, stack, key, mode))
                print(f"  {mode}: {rounds[-1]['ok_per_s']} req/s", flush=True)
    finally:
        stack.stop_all()
    with psycopg2.connect(f"{PG}/{DB}") as db, db.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM delivery_message),"
            " (SELECT COALESCE(SUM(messages), 0) FROM customers_usage)"
        )
        messages, usage = cur.fetchone()
    checks = {"messages": messages, "usage": int(usage), "usage_exact": messages == usage}
    summary = summarise(rounds)
    verdict = print_report(config, rounds, summary, checks)
    out = results_dir / f"throttle-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "started": stamp,
                "args": vars(args),
                "config": config,
                "rounds": rounds,
                "summary": summary,
                "verdict": verdict,
                "checks": checks,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
