"""GET /v1/stats stays fast with 1,000,000 of the customer's messages: it reads rollups only.

The slow test of the suite (~30 s here): one INSERT ... SELECT generate_series writes the
messages, `stats.rebuild` their rollups in one statement, then the endpoint is timed and the
plan of every query it ran is checked.
"""

import statistics
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from delivery import stats
from delivery.models import MinuteRollup
from tests.factories import template

ROWS = 1_000_000

# Over the last 24 h, oldest first (ordered ids: the primary key index is appended to, not
# split at random). 1 in 200 failed, 1 in 500 dead, 1 in 1,000 cancelled, the newest 5,000
# deferred (a backlog), the rest sent with a skewed latency of up to 2 minutes; one message in
# ten through a second template.
_LOAD_SQL = """
    INSERT INTO delivery_message
           (id, "to", data, from_email, reply_to, request_hash, queue, status, attempts,
            accepted_at, sent_at, finished_at, provider, last_error, customer_id,
            template_version_id)
    SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
           '["ana@example.com"]', '{}', 'app@example.com', '', '', 'q', s.status, 1,
           s.accepted, CASE WHEN s.status = 'sent' THEN s.accepted + s.latency END,
           CASE WHEN s.status <> 'deferred' THEN s.accepted + s.latency END, '', '',
           %(customer)s, CASE WHEN i %% 10 = 0 THEN %(other)s ELSE %(version)s END
      FROM generate_series(1, %(rows)s) AS i
     CROSS JOIN LATERAL (
           SELECT %(now)s - (%(rows)s - i) * interval '86 ms' AS accepted,
                  make_interval(secs => random() ^ 4 * 120) AS latency,
                  CASE WHEN i > %(rows)s - 5000 THEN 'deferred'
                       WHEN i %% 200 = 0 THEN 'failed'
                       WHEN i %% 500 = 1 THEN 'dead'
                       WHEN i %% 1000 = 2 THEN 'cancelled'
                       ELSE 'sent' END AS status) AS s
"""


def _timed(client, url: str, calls: int = 5) -> tuple[float, list[dict]]:
    """Median wall time (ms) of `calls` GETs, and the queries of the last one."""
    times = []
    for _ in range(calls):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.content
    return statistics.median(times), queries.captured_queries


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stats_answer_in_under_100_ms_from_rollups_with_a_million_messages(alice, bob):
    other = template(alice.customer, slug="invoice")
    now = timezone.now()
    params = {
        "customer": alice.customer.pk,
        "version": alice.customer.templates.get(slug="welcome").current_version_id,
        "other": other.current_version_id,
        "rows": ROWS,
        "now": now,
    }
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(_LOAD_SQL, params)
        t1 = time.perf_counter()
        stats.rebuild(now - timedelta(days=2))
        t2 = time.perf_counter()
        cursor.execute("ANALYZE delivery_message")
        cursor.execute("ANALYZE delivery_minuterollup")
    print(f"\nload {t1 - t0:.1f} s, rollups {t2 - t1:.1f} s, {MinuteRollup.objects.count()} rows")

    for url in ("/v1/stats", "/v1/stats?template=invoice"):
        median_ms, queries = _timed(alice.client, url)
        print(f"{url}: median {median_ms:.1f} ms")
        assert median_ms < 100, url
        rollup_queries = [q["sql"] for q in queries if "delivery_minuterollup" in q["sql"]]
        assert len(rollup_queries) == 1
        plan = _plan(rollup_queries[0])
        assert "delivery_minuterollup" in plan and "delivery_message" not in plan, plan
        # The only other read of messages is the live count of unfinished ones: bounded by
        # its LIMIT, on the (customer, status) index, never a scan of the table.
        for sql in (q["sql"] for q in queries if "delivery_message" in q["sql"]):
            plan = _plan(sql)
            assert "Seq Scan" not in plan and "Limit" in plan, plan

    body = alice.client.get("/v1/stats").json()
    day = body["last_day"]
    finished = sum(day["counts"].values())
    assert ROWS - 5000 - 2000 < finished <= ROWS - 5000  # the oldest minute may fall outside
    assert day["counts"]["failed"] == pytest.approx(ROWS / 200, rel=0.01)
    assert 0 < day["latency"]["p50"] < day["latency"]["p95"] < day["latency"]["p99"] <= 120
    assert body["unfinished"]["deferred"] == 5000  # under MAILQ_STATS_LIVE_LIMIT: exact
    assert body["unfinished_exact"] is True
    # Bob, in the same table, still sees nothing of alice's.
    assert bob.client.get("/v1/stats").json()["last_day"]["counts"]["sent"] == 0
