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
Throughput: --rounds rounds per mode of --clients connections for --seconds (wrk). Latency of a
request alone: both servers at once, one connection sending to each in turn, --pairs requests
per mode, so the two modes are compared under the same conditions (at saturation, p50 is mostly
queueing: the throughput cost times the number of requests waiting).
Bar (issue #4): throttling costs at most 10 % of throughput and 1 ms at p50 (a request alone).
"""

import argparse
import json
import os
import random
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
    pct,
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
    p.add_argument("--pairs", type=int, default=1500, help="latency phase: requests per mode")
    p.add_argument("--warmup-pairs", type=int, default=100)
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--python-loadgen", action="store_true", help="Python threads, not wrk")
    p.add_argument("--wait-idle", type=float, default=60, help="max s to wait for a quiet CPU")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup, args.pairs = 1, 5, 1, 200
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
    finally:
        stack.procs.pop("web").stop()
    ok = run["requests"] - run["errors"]
    run["mode"] = mode
    run["ok_per_s"] = round(ok / run["seconds"], 1)
    for group, name in (("web", "web"), ("postgres", "pg")):
        used = after[group] - before[group]
        run[f"{name}_cpu_ms_per_req"] = round(1000 * used / max(ok, 1), 3)
    # Busy CPU of the machine that none of ours explains (Redis is in it): when large, another
    # job shared the machine during the round.
    ours = sum(after[g] - before[g] for g in ("web", "postgres", "rabbitmq", "loadgen"))
    run["other_cpu_s"] = round(after["machine"] - before["machine"] - ours, 2)
    return run


def latency_ab(args, stack: Stack, key: str) -> dict:
    """Latency of one request alone, off vs on, measured in pairs under the same conditions.

    Both servers run at once; one connection sends to each in turn (in random order per pair),
    so there is no queueing and any drift or other load hits both modes alike.
    """
    clients = {}
    for mode, value in MODES.items():
        stack.env["MAILQ_THROTTLING"] = value
        port = free_port()
        stack.start_web(port, args.web_workers, access_log=False)
        stack.procs[f"web-{mode}"] = stack.procs.pop("web")
        clients[mode] = Client(port, key)
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    errors = 0
    try:
        for i in range(args.warmup_pairs + args.pairs):
            order = random.sample(list(MODES), 2)
            for mode in order:
                status, _, seconds = clients[mode].post("/v1/messages", BODY.encode())
                errors += status != 202
                if i >= args.warmup_pairs:
                    latencies[mode].append(seconds)
    finally:
        for mode in MODES:
            stack.procs.pop(f"web-{mode}").stop()
    diffs = [on - off for off, on in zip(latencies["off"], latencies["on"], strict=True)]
    result = {"pairs": args.pairs, "errors": errors}
    for mode, values in latencies.items():
        result[f"{mode}_p50_ms"] = round(1000 * pct(values, 0.5), 2)
        result[f"{mode}_p99_ms"] = round(1000 * pct(values, 0.99), 2)
    result["paired_diff_p50_ms"] = round(1000 * statistics.median(diffs), 2)
    return result


def summarise(rounds: list[dict]) -> dict[str, dict]:
    keys = ["ok_per_s", "p50_ms", "p99_ms", "web_cpu_ms_per_req", "pg_cpu_ms_per_req"]
    summary = {}
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {k: round(statistics.median(r[k] for r in mine), 3) for k in keys}
        summary[mode]["errors"] = sum(r["errors"] for r in mine)
        summary[mode]["requests"] = sum(r["requests"] for r in mine)
    return summary


def print_report(config: dict, rounds: list[dict], summary: dict, ab: dict, checks: dict) -> dict:
    print("\n" + "  ".join(f"{k}={v}" for k, v in config.items()))
    c = config["clients"]
    cols = ["req/s", "p50 ms", "p99 ms", "web CPU", "pg CPU", "errors", "other s"]
    fields = ["ok_per_s", "p50_ms", "p99_ms", "web_cpu_ms_per_req", "pg_cpu_ms_per_req", "errors"]
    print(f"\nthroughput: {c} connections (wrk), {config['seconds']} s per round")
    print(f"{'round':14}" + "".join(f"{col:>10}" for col in cols))
    for i, r in enumerate(rounds, 1):
        label = f"{i} {r['mode']}"
        print(f"{label:14}" + "".join(f"{r[f]:>10}" for f in [*fields, "other_cpu_s"]))
    for mode, s in summary.items():
        print(f"{'median ' + mode:14}" + "".join(f"{s[f]:>10}" for f in fields))
    print("(CPU: ms per request; other s: machine CPU-seconds that no process of ours explains,")
    print(" Redis included: large when another job shared the machine)")
    print(f"\nlatency alone: one connection, {ab['pairs']} requests per mode, off/on in pairs")
    print(f"{'':14}{'p50 ms':>10}{'p99 ms':>10}")
    for mode in MODES:
        print(f"{'throttle ' + mode:14}{ab[f'{mode}_p50_ms']:>10}{ab[f'{mode}_p99_ms']:>10}")
    print(f"median of the paired differences (on - off): {ab['paired_diff_p50_ms']} ms")

    off, on = summary["off"], summary["on"]
    cost_pct = 100 * (off["ok_per_s"] - on["ok_per_s"]) / off["ok_per_s"]
    p50_ms = ab["on_p50_ms"] - ab["off_p50_ms"]
    cpu_ms = on["web_cpu_ms_per_req"] - off["web_cpu_ms_per_req"]
    verdict = {
        "throughput_cost_pct": round(cost_pct, 1),
        "p50_cost_ms": round(p50_ms, 2),
        "p50_cost_ms_saturated": round(on["p50_ms"] - off["p50_ms"], 2),
        "web_cpu_cost_ms": round(cpu_ms, 3),
        "throughput_ok": cost_pct <= 10,
        "p50_ok": p50_ms <= 1.0,
    }
    print(f"\nthrottling costs {cost_pct:.1f} % of throughput (bar 10 %): ", end="")
    print("PASS" if verdict["throughput_ok"] else "FAIL")
    print(f"throttling adds {p50_ms:.2f} ms at p50 of a request alone (bar 1 ms): ", end="")
    print("PASS" if verdict["p50_ok"] else "FAIL")
    print(
        f"  (at saturation p50 moves {verdict['p50_cost_ms_saturated']:+.2f} ms: that is queueing,"
        f" the throughput cost times {c} requests waiting)"
    )
    print(f"web CPU per request: {cpu_ms:+.3f} ms with throttling on")
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
        print("  latency, off and on in pairs", flush=True)
        ab = latency_ab(args, stack, key)
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
    verdict = print_report(config, rounds, summary, ab, checks)
    out = results_dir / f"throttle-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "started": stamp,
                "args": vars(args),
                "config": config,
                "rounds": rounds,
                "summary": summary,
                "latency_ab": ab,
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
