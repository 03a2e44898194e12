"""Metrics overhead: what counting costs on the two hot paths, per message and per request.

    .venv/bin/python bench/metrics_overhead.py [--messages N] [--requests N]

A micro-benchmark, no services: each mode runs in a child process of its own, because
prometheus-client picks in-memory or multiprocess (mmap files) values when it is imported.

- worker: `metrics.record_outcomes` over groups of MAILQ_RECORD_EVERY (10) sent messages, one
  provider attempt each (what sending._record adds per group, after its commit);
- web: what RequestMetricsMiddleware adds to a request (endpoint label, counter, histogram).

Prints CPU microseconds per message / per request (process CPU time) and the share of the
~1.3 ms CPU per message that the whole pipeline costs today (DESIGN.md), and writes JSON to
bench/results/.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE_CPU_US_PER_MESSAGE = 1300  # DESIGN.md: the budget the whole pipeline is measured on


def child(mode: str, messages: int, requests: int) -> dict:
    """Runs in a fresh interpreter: `mode` decides how prometheus-client stores values."""
    directory = None
    if mode == "multiprocess":
        directory = tempfile.mkdtemp(prefix="mailq-metrics-bench-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailq.settings")
    import django

    django.setup()
    from django.test import RequestFactory
    from django.urls import resolve
    from django.utils import timezone

    from delivery import metrics, queues
    from delivery.models import DeliveryAttempt, Message, Status
    from delivery.sending import Outcome
    from mailq.middleware import _endpoint

    queues._tier_names.update({"mailq.standard": "standard"})  # no database here
    now = timezone.now()
    group = []
    for _ in range(10):
        message = Message(queue="mailq.standard.express", accepted_at=now - timedelta(seconds=0.2))
        attempt = DeliveryAttempt(
            provider="smtp://127.0.0.1:1025", duration_ms=2.5, succeeded=True, permanent=False
        )
        group.append(Outcome(message, Status.SENT, now, attempts=[attempt]))

    metrics.record_outcomes(group)  # warm: label children exist from then on
    started = time.process_time()
    for _ in range(messages // len(group)):
        metrics.record_outcomes(group)
    per_message = (time.process_time() - started) / messages * 1e6

    request = RequestFactory().post("/v1/messages")
    request.resolver_match = resolve("/v1/messages")
    started = time.process_time()
    for _ in range(requests):
        t0 = time.perf_counter()
        endpoint = _endpoint(request)
        metrics.HTTP_REQUESTS.labels(endpoint, request.method, 202).inc()
        metrics.HTTP_SECONDS.labels(endpoint).observe(time.perf_counter() - t0)
    per_request = (time.process_time() - started) / requests * 1e6
    return {"mode": mode, "worker_us_per_message": per_message, "web_us_per_request": per_request}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--child", choices=["memory", "multiprocess"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.messages, args.requests)))
        return

    results = []
    for mode in ("memory", "multiprocess"):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        argv = [sys.executable, __file__, "--child", mode]
        argv += ["--messages", str(args.messages), "--requests", str(args.requests)]
        out = subprocess.run(
            argv,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"{'mode':<14}{'worker us/msg':>15}{'% of 1.3 ms':>13}{'web us/request':>16}")
    for row in results:
        share = row["worker_us_per_message"] / PIPELINE_CPU_US_PER_MESSAGE * 100
        print(
            f"{row['mode']:<14}{row['worker_us_per_message']:>15.2f}{share:>12.2f}%"
            f"{row['web_us_per_request']:>16.2f}"
        )
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = results_dir / f"metrics_overhead-{stamp}.json"
    out_path.write_text(json.dumps({"messages": args.messages, "results": results}, indent=2))
    print(f"written {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
