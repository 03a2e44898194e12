"""Prometheus metrics: the one home of every metric definition (docs/observability.md).

Two kinds, so that nothing can drift:

- **Events**, counted where they happen: API requests and refusals (web, mailq/middleware.py),
  delivery outcomes, accept->sent latency and provider attempts (workers, `record_outcomes`).
  Under gunicorn and Celery prefork each process keeps its own values; prometheus-client's
  multiprocess mode writes them to files in PROMETHEUS_MULTIPROC_DIR (one directory shared by
  the processes of a host, wiped when the stack starts) and `/metrics` sums them. The variable
  must be set before the process imports prometheus_client; without it (runserver, tests) each
  process counts in memory and `/metrics` shows its own.
- **State**, read at scrape time by `StateCollector` from PostgreSQL and RabbitMQ
  (delivery/snapshot.py): queue depth, deferred and in-flight messages, the quiet customers'
  oldest waiting message, dead letters. Counters of state kept by hand drift after a crash;
  a query cannot.

Only `record_outcomes` runs on the workers' hot path: once per recorded group, a few
microseconds per message (bench figures in docs/observability.md).
"""

import os
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from delivery import breaker, snapshot
from delivery.models import RENDER_PROVIDER, Status
from delivery.queues import tier_and_lane

if TYPE_CHECKING:  # sending.py imports this module
    from delivery.sending import Outcome

# Seconds. Real-time tiers aim at 10 s (the SLO); the long tail shows retries and backlogs.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# --- events (multiprocess) -------------------------------------------------------------------

ACCEPT_TO_SENT = Histogram(
    "mailq_accept_to_sent_seconds",
    "From acceptance (or send_at, for a scheduled send) to a provider taking the message.",
    ["tier", "lane"],
    buckets=LATENCY_BUCKETS,
)
DELIVERIES = Counter(
    "mailq_deliveries",
    "Outcomes recorded by workers: sent, retrying (a temporary failure), failed, dead.",
    ["tier", "outcome"],
)
PROVIDER_ATTEMPTS = Counter(
    "mailq_provider_attempts", "Send attempts made to a provider.", ["provider"]
)
PROVIDER_ERRORS = Counter(
    "mailq_provider_errors",
    "Attempts a provider failed: kind is temporary (failover, retry) or permanent.",
    ["provider", "kind"],
)
PROVIDER_SECONDS = Histogram(
    "mailq_provider_attempt_seconds",
    "Duration of one send attempt, success or failure.",
    ["provider"],
    buckets=PROVIDER_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "mailq_http_requests",
    "Requests by endpoint (URL pattern), method and status code.",
    ["endpoint", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "mailq_http_request_duration_seconds",
    "Time from the first middleware to the response, by endpoint (URL pattern).",
    ["endpoint"],
    buckets=HTTP_BUCKETS,
)
THROTTLED = Counter(
    "mailq_api_throttled",
    "Requests refused with 429 rate_limited: reason is rate_limit or ip_lockout.",
    ["tier", "reason"],
)
OVER_QUOTA = Counter(
    "mailq_api_over_quota",
    "Requests refused with 429 quota_exceeded, by quota period (day, month).",
    ["tier", "period"],
)


def record_outcomes(outcomes: Iterable["Outcome"]) -> None:
    """Count one recorded group of delivery outcomes (sending._record, after its commit).

    Values are grouped by label set first, so each metric's labels are looked up once per
    group, not once per message.
    """
    statuses: Tally[tuple[str, str]] = Tally()
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    errors: Tally[tuple[str, str]] = Tally()
    for outcome in outcomes:
        message = outcome.message
        tier, lane = tier_and_lane(message.queue)
        statuses[tier, outcome.status.value] += 1
        if outcome.status == Status.SENT:
            # A scheduled send is late from its send_at, not from when it was accepted.
            start = message.accepted_at
            if message.send_at is not None and message.send_at > start:
                start = message.send_at
            latencies[tier, lane].append((outcome.at - start).total_seconds())
        for attempt in outcome.attempts:
            if attempt.provider == RENDER_PROVIDER:
                continue  # no provider was called
            durations[attempt.provider].append(attempt.duration_ms / 1000)
            if not attempt.succeeded:
                errors[attempt.provider, "permanent" if attempt.permanent else "temporary"] += 1
    for (tier, lane), values in latencies.items():
        histogram = ACCEPT_TO_SENT.labels(tier, lane)
        for value in values:
            histogram.observe(value)
    for provider, values in durations.items():
        PROVIDER_ATTEMPTS.labels(provider).inc(len(values))
        histogram = PROVIDER_SECONDS.labels(provider)
        for value in values:
            histogram.observe(value)
    for (provider, kind), count in errors.items():
        PROVIDER_ERRORS.labels(provider, kind).inc(count)
    for (tier, status), count in statuses.items():
        DELIVERIES.labels(tier, status).inc(count)


# --- multiprocess bookkeeping ----------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_exited(pid: int) -> None:
    """A gunicorn worker or Celery pool process ended: drop its live gauges' files.

    Counters and histograms stay (their totals must survive the process); this matters only
    for `live*` gauges, and keeps us right if one is ever added.
    """
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


# --- state (read at scrape time) ----------------------------------------------------------------


def breaker_states() -> dict[str, str]:
    """Circuit-breaker state per provider: "closed", "open" or "half-open" (one Redis MGET;
    "closed" when Redis cannot say, since that is how the workers then act)."""
    return breaker.states()


BREAKER_STATES = ("closed", "open", "half-open")


class StateCollector(Collector):
    """Gauges computed from one `snapshot.take()` per scrape."""

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        snap = snapshot.take()
        families = {
            "queue": GaugeMetricFamily(
                "mailq_queue_messages",
                "Messages ready in the tier's RabbitMQ queue (passive declare), by lane.",
                labels=["tier", "lane"],
            ),
            "consumers": GaugeMetricFamily(
                "mailq_queue_consumers",
                "Consumers (worker processes' channels) of the tier's queue, by lane.",
                labels=["tier", "lane"],
            ),
            "deferred": GaugeMetricFamily(
                "mailq_deferred_messages",
                "Messages waiting in PostgreSQL: backlog (over the customer's in-flight cap) "
                "or scheduled (send_at in the future).",
                labels=["tier", "reason"],
            ),
            "retrying": GaugeMetricFamily(
                "mailq_retrying_messages",
                "Messages waiting for a retry after a temporary failure.",
                labels=["tier"],
            ),
            "inflight": GaugeMetricFamily(
                "mailq_inflight_messages",
                "Messages released to the broker (queued) or claimed by a worker (sending).",
                labels=["tier", "status"],
            ),
            "quiet": GaugeMetricFamily(
                "mailq_quiet_oldest_queued_age_seconds",
                "The quiet-customer SLI: age of the oldest queued message among customers "
                "with no backlog (under their fair share); 0 when none waits.",
                labels=["tier"],
            ),
            "oldest": GaugeMetricFamily(
                "mailq_oldest_queued_age_seconds",
                "Age of the oldest queued message of any customer (since it was queued).",
                labels=["tier"],
            ),
            "backlog_age": GaugeMetricFamily(
                "mailq_backlog_oldest_age_seconds",
                "Age of the oldest backlog message (since it was accepted).",
                labels=["tier"],
            ),
            "backlogged": GaugeMetricFamily(
                "mailq_backlogged_customers",
                "Customers with a backlog (their messages wait for in-flight slots).",
                labels=["tier"],
            ),
            "dead": GaugeMetricFamily(
                "mailq_dead_letters",
                "Messages given up on: dead (MAILQ_MAX_ATTEMPTS temporary failures) or failed "
                "(a permanent failure).",
                labels=["tier", "status"],
            ),
        }
        for tier in snap.tiers:
            for lane, ready in tier.broker_ready.items():
                if ready is not None:
                    families["queue"].add_metric([tier.name, lane], ready)
            for lane, consumers in tier.broker_consumers.items():
                if consumers is not None:
                    families["consumers"].add_metric([tier.name, lane], consumers)
            if not snap.database_ok:
                continue
            families["deferred"].add_metric([tier.name, "backlog"], tier.backlog)
            families["deferred"].add_metric([tier.name, "scheduled"], tier.scheduled)
            families["retrying"].add_metric([tier.name], tier.retrying)
            families["inflight"].add_metric([tier.name, "queued"], tier.queued)
            families["inflight"].add_metric([tier.name, "sending"], tier.sending)
            families["quiet"].add_metric([tier.name], tier.quiet_oldest_queued_seconds)
            families["oldest"].add_metric([tier.name], tier.oldest_queued_seconds)
            families["backlog_age"].add_metric([tier.name], tier.oldest_backlog_seconds)
            families["backlogged"].add_metric([tier.name], tier.backlogged_customers)
            families["dead"].add_metric([tier.name, Status.DEAD], tier.dead)
            families["dead"].add_metric([tier.name, Status.FAILED], tier.failed)
        yield from families.values()

        breakers = GaugeMetricFamily(
            "mailq_provider_circuit_state",
            "1 for the provider's current circuit-breaker state, 0 for the others.",
            labels=["provider", "state"],
        )
        for provider, current in breaker_states().items():
            for state in BREAKER_STATES:
                breakers.add_metric([provider, state], 1 if state == current else 0)
        yield breakers

        up = GaugeMetricFamily(
            "mailq_state_source_up",
            "1 if this scrape could read the source (postgresql, rabbitmq), else 0.",
            labels=["source"],
        )
        up.add_metric(["postgresql"], 1 if snap.database_ok else 0)
        up.add_metric(["rabbitmq"], 1 if snap.broker_ok else 0)
        yield up
        yield GaugeMetricFamily(
            "mailq_state_scrape_seconds",
            "Time this scrape spent reading PostgreSQL and RabbitMQ.",
            value=time.perf_counter() - started,
        )


class _ThisProcess(Collector):
    """The default registry: this process's own events (single-process mode)."""

    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()


def _events_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    return registry


def exposition() -> bytes:
    """The text exposition for one scrape: every process's events, then the state."""
    registry = _events_registry()
    registry.register(StateCollector())
    return generate_latest(registry)


def delivered_totals() -> dict[str, float]:
    """Messages sent since the stack started, by tier (the dashboard turns them into rates)."""
    totals: dict[str, float] = {}
    for family in _events_registry().collect():
        if family.name != "mailq_deliveries":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("outcome") == Status.SENT:
                tier = sample.labels["tier"]
                totals[tier] = totals.get(tier, 0.0) + sample.value
    return totals
