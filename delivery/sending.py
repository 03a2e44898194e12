"""Worker side: claim -> render -> provider chain -> record.

A few short database round trips per task, however many messages it carries: one claim (the
send ledger), then one statement per group of MAILQ_RECORD_EVERY outcomes that records their
attempts and outcomes together, and adds the finished ones to the per-minute statistics
(delivery/stats.py). No transaction is held open while a provider is called.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from delivery import breaker, metrics, stats
from delivery.models import RENDER_PROVIDER, DeliveryAttempt, Message, Status
from delivery.providers import build_chain
from delivery.providers.base import (
    Email,
    Provider,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from templates.models import TemplateVersion
from templates.rendering import RenderError, render

log = logging.getLogger(__name__)

# Template versions are immutable, so a worker process may cache them for its whole life.
_versions: dict[int, TemplateVersion] = {}

# One provider chain per thread: a provider holds a live connection (an SMTP session) that two
# threads must not share. Prefork pool processes have one thread; the express pool runs threads
# (delivery/management/commands/run_worker.py). `close_providers` closes every thread's chain
# and bumps the generation, so each thread builds a fresh one (from current settings) next time.
_local = threading.local()
_chains: list[list[Provider]] = []
_chains_lock = threading.Lock()
_generation = 0


def provider_chain() -> list[Provider]:
    """This thread's provider chain; connections inside it are reused across tasks."""
    chain = getattr(_local, "chain", None)
    if chain is None or _local.generation != _generation:
        chain = build_chain(settings.MAILQ_PROVIDERS)
        with _chains_lock:
            _chains.append(chain)
        _local.chain, _local.generation = chain, _generation
    return chain


def close_providers() -> None:
    """Close every thread's provider connections (worker shutdown, or settings changed)."""
    global _generation
    with _chains_lock:
        chains = list(_chains)
        _chains.clear()
        _generation += 1
    for chain in chains:
        for provider in chain:
            provider.close()


@dataclass(slots=True)
class Outcome:
    message: Message
    status: Status
    at: datetime
    provider: str = ""
    error: str = ""
    release_at: datetime | None = None
    attempts: list[DeliveryAttempt] = field(default_factory=list)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: uniform in [base, base * 2**(attempt-1)], capped."""
    base = settings.MAILQ_RETRY_BASE_SECONDS
    ceiling = min(settings.MAILQ_RETRY_MAX_SECONDS, base * 2 ** max(attempt - 1, 0))
    return random.uniform(base, max(base, ceiling))


@dataclass(slots=True)
class Report:
    """What one delivery call did: counts by outcome, and whose in-flight slots it freed."""

    counts: dict[str, int] = field(default_factory=dict)
    customer_ids: set[int] = field(default_factory=set)
    # Claimed but not sent because the worker is stopping: queued again, to publish as
    # (id, queue, customer id).
    handed_back: list[tuple[str, str, int]] = field(default_factory=list)


def _never() -> bool:
    return False


def deliver(message_ids: list[str], stopping: Callable[[], bool] = _never) -> Report:
    """Deliver the messages among `message_ids` that are still queued. Safe to run twice.

    `stopping` is asked before each send; once it is true (the worker is shutting down), the
    sends made are recorded and the rest of the batch is handed back as `queued`.
    """
    messages = Message.objects.claim(message_ids)
    report = Report()
    if not messages:
        return report
    _load_versions({m.template_version_id for m in messages})
    # Providers that failed at the connection level are skipped for the rest of this task, so
    # a dead provider costs one timeout per task, not one per message.
    down: set[str] = set()
    pending: list[Outcome] = []
    unsent: list[Message] = []
    for index, message in enumerate(messages):
        if stopping():
            unsent = messages[index:]
            break
        outcome = _deliver_one(message, down)
        pending.append(outcome)
        report.counts[outcome.status] = report.counts.get(outcome.status, 0) + 1
        report.customer_ids.add(outcome.message.customer_id)
        # Recording in small groups bounds what a crash can make us send twice (mail the
        # provider took but we had not recorded) to MAILQ_RECORD_EVERY messages per worker.
        if len(pending) >= settings.MAILQ_RECORD_EVERY:
            _record(pending)
            pending = []
    if pending:
        _record(pending)
    if unsent:
        report.handed_back = _hand_back(unsent)
    return report


# Not attempted, so the claim is undone (attempts too) and the message is published again.
_HAND_BACK_SQL = """
    UPDATE delivery_message
       SET status = 'queued', attempts = attempts - 1, sending_at = NULL,
           queued_at = %s, published_at = NULL
     WHERE id = ANY(%s::uuid[]) AND status = 'sending' AND sending_at = %s
 RETURNING id::text, queue, customer_id
"""


def _hand_back(messages: list[Message]) -> list[tuple[str, str, int]]:
    ids = [str(m.id) for m in messages]
    with connection.cursor() as cursor:
        cursor.execute(_HAND_BACK_SQL, [timezone.now(), ids, messages[0].sending_at])
        return cursor.fetchall()


def _load_versions(version_ids: set[int]) -> None:
    missing = version_ids - _versions.keys()
    if missing:
        _versions.update(TemplateVersion.objects.in_bulk(missing))


def build_email(message: Message, version: TemplateVersion) -> Email:
    content = render(version, message.data)
    return Email(
        message_id=f"<{message.id}@{settings.MAILQ_MESSAGE_ID_DOMAIN}>",
        from_email=message.from_email,
        to=tuple(message.to),
        subject=content.subject,
        text=content.text,
        html=content.html,
        reply_to=message.reply_to,
        headers={"X-Mailq-Message-Id": str(message.id)},
    )


def _deliver_one(message: Message, down: set[str]) -> Outcome:
    try:
        email = build_email(message, _versions[message.template_version_id])
    except RenderError as exc:
        # A template that cannot render will not render on retry either: fail at once.
        now = timezone.now()
        attempt = DeliveryAttempt(
            message=message,
            provider=RENDER_PROVIDER,
            started_at=now,
            duration_ms=0.0,
            succeeded=False,
            error=exc.message,
            permanent=True,
        )
        return Outcome(message, Status.FAILED, now, error=exc.message, attempts=[attempt])

    attempts: list[DeliveryAttempt] = []
    last_error = ""
    for provider in provider_chain():
        if provider.name in down:
            last_error = last_error or f"{provider.name}: unavailable earlier in this task"
            continue
        started = timezone.now()
        t0 = time.perf_counter()
        try:
            result = breaker.send(provider, email)
        except breaker.CircuitOpen as exc:
            # Skipped, not tried: no attempt row, and the next provider at once.
            last_error = last_error or exc.message
            continue
        except ProviderError as exc:
            attempts.append(_attempt(message, provider.name, started, t0, exc))
            last_error = f"{provider.name}: {exc.message}"
            if exc.permanent:
                # The message itself is refused (bad address, content): no failover, no retry.
                return Outcome(
                    message,
                    Status.FAILED,
                    timezone.now(),
                    provider.name,
                    last_error,
                    attempts=attempts,
                )
            if isinstance(exc, (ProviderTimeout, ProviderUnavailable)):
                down.add(provider.name)
            continue  # temporary: fail over to the next provider
        attempts.append(_attempt(message, provider.name, started, t0, None))
        return Outcome(message, Status.SENT, timezone.now(), result.provider, attempts=attempts)

    now = timezone.now()
    if message.attempts >= settings.MAILQ_MAX_ATTEMPTS:
        return Outcome(message, Status.DEAD, now, error=last_error, attempts=attempts)
    release_at = now + timedelta(seconds=backoff_seconds(message.attempts))
    return Outcome(
        message, Status.RETRYING, now, error=last_error, release_at=release_at, attempts=attempts
    )


def _attempt(
    message: Message, provider: str, started: datetime, t0: float, error: ProviderError | None
) -> DeliveryAttempt:
    return DeliveryAttempt(
        message=message,
        provider=provider,
        started_at=started,
        duration_ms=(time.perf_counter() - t0) * 1000,
        succeeded=error is None,
        error=error.message if error else "",
        permanent=bool(error and error.permanent),
    )


# Attempts, outcomes and statistics in ONE statement (stats.with_rollup): data-modifying CTEs
# run exactly once, in the same implicit transaction, so one round trip commits all three
# (autocommit) instead of BEGIN, INSERT, UPDATE, INSERT, COMMIT. The claim guard (status and
# sending_at) keeps a stale worker from overwriting a newer claim, and what it did not update
# is not counted.
_ATTEMPTS_CTE = """
    attempts AS (
        INSERT INTO delivery_deliveryattempt
               (message_id, provider, started_at, duration_ms, succeeded, error, permanent)
        VALUES {rows})
"""
_OUTCOMES_SQL = f"""
    UPDATE delivery_message AS m
       SET status = v.status,
           sent_at = v.sent_at,
           finished_at = v.finished_at,
           release_at = v.release_at,
           provider = v.provider,
           last_error = v.last_error
      FROM (VALUES {{rows}})
        AS v(id, claimed_at, status, sent_at, finished_at, release_at, provider, last_error)
     WHERE m.id = v.id AND m.status = 'sending' AND m.sending_at = v.claimed_at
 RETURNING {stats.RETURNING}"""
_ATTEMPT_ROW = "(%s::uuid, %s, %s::timestamptz, %s, %s, %s, %s)"
_OUTCOME_ROW = (
    "(%s::uuid, %s::timestamptz, %s, %s::timestamptz, %s::timestamptz, %s::timestamptz, %s, %s)"
)


def _record(outcomes: list[Outcome]) -> None:
    """Write every attempt and every outcome of the group in one statement.

    Raw multi-row SQL: the ORM's bulk_create costs more CPU than the sends around it.
    """
    attempts = [
        (
            str(a.message_id),
            a.provider,
            a.started_at,
            a.duration_ms,
            a.succeeded,
            a.error,
            a.permanent,
        )
        for o in outcomes
        for a in o.attempts
    ]
    rows = []
    for o in outcomes:
        finished = o.at if o.status in (Status.SENT, Status.FAILED, Status.DEAD) else None
        sent = o.at if o.status == Status.SENT else None
        rows.append(
            (
                str(o.message.id),
                o.message.sending_at,
                o.status.value,
                sent,
                finished,
                o.release_at,
                o.provider,
                o.error,
            )
        )
    with connection.cursor() as cursor:
        mogrify = cursor.cursor.mogrify
        update = _OUTCOMES_SQL.format(
            rows=",".join(mogrify(_OUTCOME_ROW, r).decode() for r in rows)
        )
        ctes = []
        if attempts:  # none when every provider was skipped as down earlier in the task
            values = ",".join(mogrify(_ATTEMPT_ROW, a).decode() for a in attempts)
            ctes.append(_ATTEMPTS_CTE.format(rows=values))
        cursor.execute(stats.with_rollup(update, *ctes))
    # Counted once committed, a group at a time (a few microseconds per message).
    metrics.record_outcomes(outcomes)
