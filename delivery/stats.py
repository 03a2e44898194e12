"""Delivery statistics: per-minute rollups, and the figures a customer reads from them.

Writing. The statement that records outcomes (sending.py) and the one that cancels a message
(intake.py) are each wrapped by `with_rollup`: the `UPDATE delivery_message ... RETURNING`
becomes a CTE, and one `INSERT ... ON CONFLICT DO UPDATE` adds the rows it really changed to
`MinuteRollup` (counts per final status, the sum of latencies and a histogram with fixed
bounds), keyed by customer, template, the minute of `finished_at`, and a shard. So a rollup
counts exactly the transitions that committed: a message whose lease was reclaimed, or a
task delivered twice, changes no row and adds nothing, and nothing is counted that rolled
back. There is no watermark to keep, and no message finishing out of order can be missed.

Contention. Each thread writes its own shard (OS thread id modulo ROLLUP_SHARDS), so the
workers of one busy customer do not queue on one row lock; a group's rows are upserted in key
order, so two writers that do share a shard cannot deadlock. The lock is held only until the
commit that immediately follows (the same statement's, in autocommit).

Reading. Figures for a window are a sum over at most (minutes x templates x shards) rollup
rows, never a scan of messages. Percentiles come from the histogram: the bucket holding the
rank, then linear interpolation inside it (what Prometheus' histogram_quantile does), so a
percentile is exact to within its bucket. Unfinished messages are counted live from the
(customer, status) index, each count stopping at MAILQ_STATS_LIVE_LIMIT rows.
"""

import threading
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection, transaction

from delivery.models import LATENCY_BOUNDS, Status
from templates.models import EmailTemplate, TemplateVersion

BUCKETS = len(LATENCY_BOUNDS) + 1
PERCENTILES = (50, 95, 99)
COUNTED = (Status.SENT, Status.FAILED, Status.DEAD, Status.CANCELLED)
UNFINISHED = (Status.DEFERRED, Status.QUEUED, Status.SENDING, Status.RETRYING)
# Rows per (customer, template, minute): more shards, less lock contention, more rows to read.
ROLLUP_SHARDS = 8
# What `with_rollup` needs the wrapped UPDATE to return, with the table aliased `m`.
RETURNING = (
    "m.customer_id, m.template_version_id, m.status, m.accepted_at, m.send_at, m.sent_at, "
    "m.finished_at"
)

_BOUNDS_SQL = "'{" + ",".join(str(b) for b in LATENCY_BOUNDS) + "}'::float8[]"
_COUNT_COLUMNS = ", ".join(s.value for s in COUNTED)


def _aggregate(source: str, shard: int) -> str:
    """SELECT the rollup rows of the finished messages in `source` (rows with RETURNING's
    columns). Latency runs from acceptance, or from `send_at` for a scheduled send.

    Two steps: messages are first counted per (minute, status, bucket), a cheap hash
    aggregate; only those few groups are then folded into one row per minute (a backfill of
    a million messages takes 1 s instead of 5).
    """
    counts = ", ".join(
        f"coalesce(sum(n) FILTER (WHERE status = '{s.value}'), 0)::int" for s in COUNTED
    )
    buckets = ", ".join(f"coalesce(sum(n) FILTER (WHERE b = {i}), 0)::int" for i in range(BUCKETS))
    return f"""
    SELECT customer_id, template_id, minute, {shard:d}, {counts}, coalesce(sum(seconds), 0),
           ARRAY[{buckets}]
      FROM (SELECT d.customer_id, v.template_id, date_trunc('minute', d.finished_at) AS minute,
                   d.status, width_bucket(l.latency, {_BOUNDS_SQL}) AS b, count(*) AS n,
                   sum(l.latency) AS seconds
              FROM {source} AS d
              JOIN email_templates_templateversion v ON v.id = d.template_version_id
             CROSS JOIN LATERAL (
                   SELECT CASE WHEN d.status = 'sent' THEN greatest(0, extract(
                          epoch FROM d.sent_at - greatest(d.accepted_at, d.send_at))::float8)
                          END AS latency) AS l
             WHERE d.finished_at IS NOT NULL AND d.status IN ({_quoted(COUNTED)})
             GROUP BY 1, 2, 3, 4, 5) AS g
     GROUP BY 1, 2, 3
     ORDER BY 1, 2, 3"""


def _quoted(statuses: Sequence[Status]) -> str:
    return ", ".join(f"'{s.value}'" for s in statuses)


_INSERT = f"""
    INSERT INTO delivery_minuterollup AS r
           (customer_id, template_id, minute, shard, {_COUNT_COLUMNS}, latency_sum, buckets)"""

# Adding to an existing row: counts, the latency sum, and the histogram element by element.
_ADD = (
    "ON CONFLICT (customer_id, template_id, minute, shard) DO UPDATE SET "
    + ", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in (*COUNTED, "latency_sum"))
    + ", buckets = ARRAY(SELECT x + y FROM unnest(r.buckets, EXCLUDED.buckets)"
    " WITH ORDINALITY AS u(x, y, i) ORDER BY i)"
)


def with_rollup(update_sql: str, *ctes: str) -> str:
    """One statement: the `ctes` given (`name AS (...)`, run first), `update_sql` (an UPDATE of
    delivery_message aliased `m`, ending in `RETURNING {RETURNING}`), then the upsert of the
    messages it finished into this thread's shard.

    Its row count is the number of rollup rows written (0: the update finished nothing).
    """
    # The OS thread id (the pid, in a single-threaded process) picks the shard: read on every
    # call, since worker processes fork, and the express pool runs threads.
    head = "".join(f"{cte}, " for cte in ctes)
    return f"WITH {head}done AS ({update_sql}) {_upsert(threading.get_native_id() % ROLLUP_SHARDS)}"


@cache
def _upsert(shard: int) -> str:
    return f"{_INSERT} {_aggregate('done', shard)} {_ADD}"


_REBUILD_DELETE = "DELETE FROM delivery_minuterollup WHERE minute >= %(since)s"
_REBUILD_SOURCE = "(SELECT * FROM delivery_message WHERE finished_at >= %(since)s)"


def rebuild(since: datetime) -> int:
    """Recompute the rollups of every minute from `since` from the messages themselves.

    A repair and backfill tool (e.g. after upgrading, for messages finished before rollups
    existed): it scans messages, so run it while workers are stopped, or they may add to a
    minute it is rewriting. Returns the rollup rows written.
    """
    since = since.replace(second=0, microsecond=0)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_REBUILD_DELETE, {"since": since})
        cursor.execute(f"{_INSERT} {_aggregate(_REBUILD_SOURCE, 0)}", {"since": since})
        return cursor.rowcount


# Oldest first, a bounded batch per sweep (the sweeper runs every few seconds).
_PRUNE_SQL = """
    DELETE FROM delivery_minuterollup
     WHERE id IN (SELECT id FROM delivery_minuterollup WHERE minute < %(cutoff)s
                   ORDER BY minute LIMIT %(limit)s)"""


def prune(now: datetime) -> int:
    """Delete up to MAILQ_SWEEP_BATCH rollup rows older than MAILQ_STATS_RETENTION_DAYS."""
    cutoff = now - timedelta(days=settings.MAILQ_STATS_RETENTION_DAYS)
    with connection.cursor() as cursor:
        cursor.execute(_PRUNE_SQL, {"cutoff": cutoff, "limit": settings.MAILQ_SWEEP_BATCH})
        return cursor.rowcount


# --- reading --------------------------------------------------------------------------------


@dataclass
class Figures:
    """Finished messages in some period: counts per final status and the latency histogram."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in COUNTED})
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    latency_sum: float = 0.0

    def __add__(self, other: "Figures") -> "Figures":
        return Figures(
            {k: v + other.counts[k] for k, v in self.counts.items()},
            [a + b for a, b in zip(self.buckets, other.buckets, strict=True)],
            self.latency_sum + other.latency_sum,
        )

    @property
    def samples(self) -> int:
        return sum(self.buckets)

    def percentile(self, q: float) -> float | None:
        return percentile(self.buckets, q)

    def latency(self) -> dict[str, float | int | None]:
        """p50/p95/p99 and mean accept->sent seconds of the sent messages, and their number."""
        n = self.samples
        figures: dict[str, float | int | None] = {
            f"p{q}": _round(self.percentile(q)) for q in PERCENTILES
        }
        figures["mean"] = _round(self.latency_sum / n) if n else None
        figures["samples"] = n
        return figures


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency: what width_bucket() gives in SQL."""
    return bisect_right(LATENCY_BOUNDS, seconds)


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0-100) of a histogram over LATENCY_BOUNDS; None when empty.

    Linear interpolation inside the bucket that holds the rank. The open-ended last bucket
    has no upper bound, so a rank there answers its lower bound (a floor: "at least 1 h").
    """
    total = sum(buckets)
    if not total:
        return None
    rank = q / 100 * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS[index - 1] if index else 0.0
            if index == len(LATENCY_BOUNDS):
                return lower
            upper = LATENCY_BOUNDS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-1]  # unreachable: the last non-empty bucket holds rank == total


_SUM_BUCKETS = ", ".join(f"sum(buckets[{i + 1}])" for i in range(BUCKETS))
_FIGURES_SQL = f"""
    SELECT {{key}} AS k, {", ".join(f"sum({c})" for c in COUNTED)}, sum(latency_sum),
           ARRAY[{_SUM_BUCKETS}]
      FROM delivery_minuterollup
     WHERE customer_id = %(customer)s AND minute >= %(since)s
           AND (%(all)s OR template_id = ANY(%(templates)s))
     GROUP BY 1"""


def _figures(customer_id: int, templates: list[int] | None, since: datetime, key: str, **params):
    """{key value: Figures} over the rollups of a customer (and templates) from `since`."""
    sql = _FIGURES_SQL.format(key=key)
    args = {
        "customer": customer_id,
        "since": since,
        "all": templates is None,
        "templates": templates or [],
        **params,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        rows = cursor.fetchall()
    out: dict = {}
    for key_value, *counts, latency_sum, buckets in rows:
        named = {s.value: int(n) for s, n in zip(COUNTED, counts[: len(COUNTED)], strict=True)}
        out[key_value] = Figures(named, [int(n) for n in buckets], float(latency_sum))
    return out


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


@dataclass
class Summary:
    """The last hour and the last day (60 and 1,440 minutes, the current one included)."""

    now: datetime
    hour_since: datetime
    day_since: datetime
    hour: Figures
    day: Figures


def summary(customer_id: int, templates: list[int] | None, now: datetime) -> Summary:
    """Figures of the last hour and the last day, from one query over the rollups."""
    minute = floor_minute(now)
    hour_since, day_since = minute - timedelta(minutes=59), minute - timedelta(minutes=1439)
    split = _figures(customer_id, templates, day_since, "minute >= %(hour)s", hour=hour_since)
    hour = split.get(True, Figures())
    return Summary(now, hour_since, day_since, hour, hour + split.get(False, Figures()))


def hourly(customer_id: int, templates: list[int] | None, now: datetime, hours: int = 24):
    """[(hour start, Figures)] for the last `hours` hours, oldest first, the current one last."""
    current = now.replace(minute=0, second=0, microsecond=0)
    since = current - timedelta(hours=hours - 1)
    by_hour = _figures(customer_id, templates, since, "date_trunc('hour', minute)")
    starts = [since + timedelta(hours=i) for i in range(hours)]
    return [(start, by_hour.get(start, Figures())) for start in starts]


# Per status: how many rows the bounded scan read, and how many of them match the templates.
# One branch per status with the status written out, so the planner sees each one's rarity and
# takes the (customer, status) index (a generic plan would scan the table for a rare status).
_UNFINISHED_BRANCH = """
    SELECT '{status}', count(*) FILTER (WHERE {{match}}), count(*)
      FROM (SELECT {{column}} FROM delivery_message m
             WHERE m.customer_id = %(customer)s AND m.status = '{status}'
             LIMIT %(limit)s) AS x"""
_UNFINISHED_SQL = " UNION ALL ".join(_UNFINISHED_BRANCH.format(status=s.value) for s in UNFINISHED)


def unfinished(customer_id: int, versions: list[int] | None) -> tuple[dict[str, int], bool]:
    """({status: count} of messages not yet finished, exact). Live, from the (customer, status)
    index; each status reads at most MAILQ_STATS_LIVE_LIMIT rows, so a count that reached it
    (or, for a template, a scan that did) is a lower bound and `exact` is false."""
    limit = settings.MAILQ_STATS_LIVE_LIMIT
    if versions is None:  # the index alone answers (an index-only scan)
        sql = _UNFINISHED_SQL.format(match="true", column="1")
    else:
        sql = _UNFINISHED_SQL.format(
            match="template_version_id = ANY(%(versions)s)", column="m.template_version_id"
        )
    params = {"customer": customer_id, "versions": versions or [], "limit": limit}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    counts = {status: int(n) for status, n, _ in rows}
    return counts, all(scanned < limit for _, _, scanned in rows)


# --- what a customer asks for ------------------------------------------------------------------


@dataclass
class Scope:
    """Whose figures: a customer's, or one of its templates' (every template with that slug,
    deleted ones included, so a slug keeps its history)."""

    customer_id: int
    template: str | None = None
    template_ids: list[int] | None = None
    version_ids: list[int] | None = None


def scope(customer_id: int, slug: str | None) -> Scope | None:
    """The scope of a request; None when the customer never had a template `slug`."""
    if slug is None:
        return Scope(customer_id)
    template_ids = list(
        EmailTemplate.objects.filter(customer_id=customer_id, slug=slug).values_list(
            "id", flat=True
        )
    )
    if not template_ids:
        return None
    version_ids = list(
        TemplateVersion.objects.filter(template_id__in=template_ids).values_list("id", flat=True)
    )
    return Scope(customer_id, slug, template_ids, version_ids)


def report(where: Scope, now: datetime) -> dict:
    """GET /v1/stats: the last hour and day from the rollups, unfinished counts live."""
    figures = summary(where.customer_id, where.template_ids, now)
    counts, exact = unfinished(where.customer_id, where.version_ids)
    return {
        "template": where.template,
        "generated_at": now,
        "last_hour": _window(figures.hour_since, figures.hour),
        "last_day": _window(figures.day_since, figures.day),
        "unfinished": counts,
        "unfinished_exact": exact,
        "latency_bucket_bounds": list(LATENCY_BOUNDS),
    }


def _window(since: datetime, figures: Figures) -> dict:
    return {"since": since, "counts": figures.counts, "latency": figures.latency()}
