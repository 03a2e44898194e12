"""What waits where, read when asked: the state behind the metrics' gauges and the operator
dashboard (docs/observability.md defines each figure).

Nothing here is kept by hand, so nothing can drift: PostgreSQL is asked through the partial
indexes of delivery/models.py, RabbitMQ through a passive queue declaration (message and
consumer counts, no management API). The work is bounded by what is unfinished, never by
the table: in-flight rows are at most the sum of the active customers' caps; the backlog is
grouped per customer with the same index-only scan the reconciler makes every sweep;
scheduled, retrying and dead messages are few. A fixed number of queries, whatever the
number of customers, and a statement timeout so a scrape can never hang on a busy database.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from amqp.exceptions import AMQPError, ChannelError
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from kombu.exceptions import KombuError

from customers.models import Tier
from delivery.queues import BULK, EXPRESS, EXPRESS_SUFFIX, express_queue
from mailq.celery import app

log = logging.getLogger(__name__)

# A scrape gives up on a query after this long (and reports the database as down).
QUERY_TIMEOUT_MS = 2000
BROKER_TIMEOUT_SECONDS = 2.0
TOP_BACKLOGS = 10

# Every customer with a backlog, its size and oldest message: an index-only scan of
# `message_backlog`, the same grouping routing.reconcile runs every sweep.
_BACKLOG_SQL = """
    SELECT b.customer_id, c.name, t.name, b.n, b.oldest
      FROM (SELECT customer_id, count(*) AS n, min(accepted_at) AS oldest
              FROM delivery_message
             WHERE status = 'deferred' AND release_at IS NULL
             GROUP BY customer_id) b
      JOIN customers_customer c ON c.id = b.customer_id
      JOIN customers_tier t ON t.id = c.tier_id
"""
# In flight, per queue, customer and status (`message_inflight`: at most the caps' sum).
_INFLIGHT_SQL = """
    SELECT queue, customer_id, status, count(*), min(queued_at)
      FROM delivery_message
     WHERE status IN ('queued', 'sending')
     GROUP BY queue, customer_id, status
"""
# Waiting for their time: scheduled sends and retries (`message_release_due`).
_WAITING_SQL = """
    SELECT queue, status, count(*)
      FROM delivery_message
     WHERE status IN ('retrying', 'deferred') AND release_at IS NOT NULL
     GROUP BY queue, status
"""
# Dead letters, dead or failed (`message_dead_letters_by_queue`: an index-only count). They
# stay until redriven or deleted, so this grows with what is kept, not with traffic.
_DEAD_SQL = """
    SELECT queue, status, count(*) FROM delivery_message
     WHERE status IN ('dead', 'failed')
     GROUP BY queue, status
"""


@dataclass
class TierState:
    name: str
    queue: str
    # lane -> messages ready in RabbitMQ / its consumers; None when the broker did not say.
    broker_ready: dict[str, int | None] = field(default_factory=dict)
    broker_consumers: dict[str, int | None] = field(default_factory=dict)
    backlog: int = 0  # deferred: over the customer's in-flight cap
    scheduled: int = 0  # deferred: send_at in the future
    retrying: int = 0
    queued: int = 0
    sending: int = 0
    dead: int = 0  # dead letters: MAILQ_MAX_ATTEMPTS temporary failures
    failed: int = 0  # dead letters: a permanent failure
    backlogged_customers: int = 0
    oldest_backlog_seconds: float = 0.0  # since accepted
    oldest_queued_seconds: float = 0.0  # since queued, any customer
    # The quiet-customer SLI: since queued, among customers without a backlog.
    quiet_oldest_queued_seconds: float = 0.0

    @property
    def deferred(self) -> int:
        return self.backlog + self.scheduled

    @property
    def inflight(self) -> int:
        return self.queued + self.sending

    @property
    def dead_letters(self) -> int:
        return self.dead + self.failed


@dataclass
class CustomerBacklog:
    customer_id: int
    name: str
    tier: str
    messages: int
    oldest_seconds: float
    inflight: int = 0


@dataclass
class Snapshot:
    taken_at: datetime
    tiers: list[TierState]
    top_backlogs: list[CustomerBacklog]
    database_ok: bool
    broker_ok: bool


def take() -> Snapshot:
    """Read the state of every tier now."""
    now = timezone.now()
    try:
        tiers = list(Tier.objects.values_list("name", "queue"))
    except DatabaseError as exc:
        log.warning("snapshot: the database is unavailable: %s", exc)
        return Snapshot(now, [], [], database_ok=False, broker_ok=False)
    states = {name: TierState(name, queue) for name, queue in tiers}
    by_queue = {queue: states[name] for name, queue in tiers}
    by_queue |= {express_queue(queue): states[name] for name, queue in tiers}

    def state_of(queue: str) -> TierState:
        # A queue no tier names any more (a renamed tier's leftovers) gets a row of its own.
        if queue not in by_queue:
            base = queue.removesuffix(EXPRESS_SUFFIX)
            by_queue[queue] = states.setdefault(base, TierState(base, base))
        return by_queue[queue]

    top: list[CustomerBacklog] = []
    try:
        top = _read_database(now, states, state_of)
        database_ok = True
    except DatabaseError as exc:
        log.warning("snapshot: a state query failed: %s", exc)
        database_ok = False
    broker_ok = _read_broker(list(states.values()))
    return Snapshot(now, list(states.values()), top, database_ok, broker_ok)


def _age(now: datetime, then: datetime | None) -> float:
    return max((now - then).total_seconds(), 0.0) if then is not None else 0.0


def _read_database(now, states: dict[str, TierState], state_of) -> list[CustomerBacklog]:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = %s", [QUERY_TIMEOUT_MS])
        cursor.execute(_BACKLOG_SQL)
        backlog_rows = cursor.fetchall()
        cursor.execute(_INFLIGHT_SQL)
        inflight_rows = cursor.fetchall()
        cursor.execute(_WAITING_SQL)
        waiting_rows = cursor.fetchall()
        cursor.execute(_DEAD_SQL)
        dead_rows = cursor.fetchall()

    backlogs = {}
    for customer_id, name, tier_name, count, oldest in backlog_rows:
        state = states.setdefault(tier_name, TierState(tier_name, ""))
        state.backlog += count
        state.backlogged_customers += 1
        state.oldest_backlog_seconds = max(state.oldest_backlog_seconds, _age(now, oldest))
        backlogs[customer_id] = CustomerBacklog(
            customer_id, name, tier_name, count, _age(now, oldest)
        )

    inflight: dict[int, int] = defaultdict(int)
    for queue, customer_id, status, count, oldest_queued in inflight_rows:
        state = state_of(queue)
        inflight[customer_id] += count
        if status != "queued":
            state.sending += count
            continue
        state.queued += count
        age = _age(now, oldest_queued)
        state.oldest_queued_seconds = max(state.oldest_queued_seconds, age)
        # A customer with a backlog is over its fair share; everyone else is quiet.
        if customer_id not in backlogs:
            state.quiet_oldest_queued_seconds = max(state.quiet_oldest_queued_seconds, age)

    for queue, status, count in waiting_rows:
        state = state_of(queue)
        if status == "retrying":
            state.retrying += count
        else:
            state.scheduled += count
    for queue, status, count in dead_rows:
        state = state_of(queue)
        if status == "dead":
            state.dead += count
        else:
            state.failed += count

    top = sorted(backlogs.values(), key=lambda b: (-b.messages, b.name))[:TOP_BACKLOGS]
    for backlog in top:
        backlog.inflight = inflight.get(backlog.customer_id, 0)
    return top


def _read_broker(states: list[TierState]) -> bool:
    """Fill each tier's ready messages and consumers per lane; False if RabbitMQ is away."""
    for state in states:
        for lane in (BULK, EXPRESS):
            state.broker_ready[lane] = state.broker_consumers[lane] = None
    try:
        with app.connection_for_read(connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
            # One quick retry at most: a scrape reports the broker down rather than waiting.
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            channel = conn.channel()
            for state in states:
                if not state.queue:
                    continue
                for lane, name in ((BULK, state.queue), (EXPRESS, express_queue(state.queue))):
                    try:
                        declared = channel.queue_declare(queue=name, passive=True)
                    except ChannelError:
                        # Not declared yet (no worker started for it); the server closed the
                        # channel, so open another.
                        channel = conn.channel()
                        continue
                    state.broker_ready[lane] = declared.message_count
                    state.broker_consumers[lane] = declared.consumer_count
    except (KombuError, AMQPError, OSError) as exc:
        log.warning("snapshot: RabbitMQ is unavailable: %s", exc)
        return False
    return True
