"""Fair share: per-customer in-flight caps, backlog in PostgreSQL, released as messages finish."""

import threading
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from customers.models import Customer
from delivery import routing, sending
from delivery.models import Message, Status
from tests.factories import accepted, queue


def set_cap(customer: Customer, cap: int) -> Customer:
    Customer.objects.filter(pk=customer.pk).update(inflight_cap=cap)
    customer.refresh_from_db()
    return customer


def by_status(customer: Customer) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Message.objects.filter(customer=customer).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_a_quiet_customer_takes_the_express_lane_until_it_has_a_few_in_flight(alice, settings):
    settings.MAILQ_EXPRESS_INFLIGHT = 3
    set_cap(alice.customer, 10)
    first = accepted(alice.customer, count=2)
    later = accepted(alice.customer, count=4)
    queues = [m.queue for m in first + later]
    assert queues == [queue("standard", True)] * 3 + [queue("standard")] * 3


def test_fifo_mode_has_no_express_lane(alice, settings):
    settings.MAILQ_ROUTING = "fifo"
    assert {m.queue for m in accepted(alice.customer, count=3)} == {queue("standard")}


def test_it_defers_a_customer_over_its_inflight_cap(alice):
    set_cap(alice.customer, 3)
    messages = accepted(alice.customer, count=5)
    assert [m.status for m in messages] == [Status.QUEUED] * 3 + [Status.DEFERRED] * 2
    assert all(m.release_at is None for m in messages[3:])


def test_a_quiet_customer_takes_the_fast_path_while_another_has_a_backlog(alice, bob):
    set_cap(alice.customer, 2)
    accepted(alice.customer, count=50)
    assert by_status(alice.customer) == {"queued": 2, "deferred": 48}
    [quiet] = accepted(bob.customer)
    assert quiet.status == Status.QUEUED


def test_new_messages_wait_behind_the_customers_own_backlog(alice, providers):
    set_cap(alice.customer, 2)
    first = accepted(alice.customer, count=3)
    sending.deliver([str(first[0].id)])  # one slot frees up...
    [late] = accepted(alice.customer)
    # ...but the older deferred message goes first: the new one joins the backlog.
    assert late.status == Status.DEFERRED
    assert routing.refill([alice.customer.pk]) == 1
    assert Message.objects.get(pk=first[2].pk).status == Status.QUEUED
    assert Message.objects.get(pk=late.pk).status == Status.DEFERRED


def test_finishing_inflight_messages_releases_the_next_ones(alice, providers):
    set_cap(alice.customer, 2)
    messages = accepted(alice.customer, count=5)
    assert routing.refill([alice.customer.pk]) == 0  # the cap is full
    report = sending.deliver([str(m.id) for m in messages[:2]])
    assert report.customer_ids == {alice.customer.pk}
    assert routing.refill(report.customer_ids) == 2
    assert by_status(alice.customer) == {"sent": 2, "queued": 2, "deferred": 1}
    # The oldest deferred were released first.
    assert Message.objects.get(pk=messages[4].pk).status == Status.DEFERRED


def test_released_messages_go_to_the_customers_current_tier_queue(alice, providers):
    from tests.factories import tier

    set_cap(alice.customer, 1)
    messages = accepted(alice.customer, count=2)
    Customer.objects.filter(pk=alice.customer.pk).update(tier=tier("premium"))
    sending.deliver([str(messages[0].id)])
    assert routing.refill([alice.customer.pk]) == 1
    assert Message.objects.get(pk=messages[1].pk).queue == queue("premium")


def test_pause_holds_everything_and_resume_releases(alice, providers):
    set_cap(alice.customer, 3)
    Customer.objects.filter(pk=alice.customer.pk).update(sending_paused=True)
    alice.customer.refresh_from_db()
    messages = accepted(alice.customer, count=4)
    assert all(m.status == Status.DEFERRED for m in messages)
    assert routing.reconcile() == 0
    Customer.objects.filter(pk=alice.customer.pk).update(sending_paused=False)
    assert routing.reconcile() == 3
    assert by_status(alice.customer) == {"queued": 3, "deferred": 1}


def test_the_reconciler_releases_stragglers_of_every_customer_oldest_first(alice, bob):
    set_cap(alice.customer, 2)
    set_cap(bob.customer, 2)
    accepted(alice.customer, count=4)
    accepted(bob.customer, count=3)
    # As if a crash lost the refill after alice's and bob's in-flight messages finished.
    Message.objects.filter(status=Status.QUEUED).update(status=Status.SENT)
    assert routing.reconcile() == 3
    assert by_status(alice.customer) == {"sent": 2, "queued": 2}
    assert by_status(bob.customer) == {"sent": 2, "queued": 1}


def test_fifo_mode_publishes_everything_at_once(alice, settings):
    settings.MAILQ_ROUTING = "fifo"
    set_cap(alice.customer, 2)
    messages = accepted(alice.customer, count=10)
    assert all(m.status == Status.QUEUED for m in messages)
    assert routing.refill([alice.customer.pk]) == 0


def test_a_due_retry_joins_the_backlog_in_acceptance_order(alice, providers):
    set_cap(alice.customer, 1)
    messages = accepted(alice.customer, count=3)
    Message.objects.filter(pk=messages[0].pk).update(
        status=Status.RETRYING, release_at=timezone.now() - timedelta(seconds=1)
    )
    assert routing.release_due() == 1
    # The retry (accepted first) takes the free slot ahead of the never-tried ones.
    assert Message.objects.get(pk=messages[0].pk).status == Status.QUEUED
    assert by_status(alice.customer) == {"queued": 1, "deferred": 2}


def test_a_scheduled_send_is_not_released_before_its_time(alice):
    send_at = timezone.now() + timedelta(hours=1)
    [message] = accepted(alice.customer, send_at=send_at)
    assert message.status == Status.DEFERRED and message.release_at == send_at
    assert routing.release_due() == 0
    assert routing.reconcile() == 0


def test_concurrent_releasers_never_release_more_than_the_cap_or_twice(
    alice, transactional_db, broker
):
    set_cap(alice.customer, 25)
    accepted(alice.customer, count=25)
    Message.objects.filter(status=Status.QUEUED).update(status=Status.SENT)
    accepted(alice.customer, count=200)  # all deferred behind the (stale) full cap
    Message.objects.filter(status=Status.QUEUED).update(status=Status.SENT)
    released: list[int] = []
    barrier = threading.Barrier(8)

    def release() -> None:
        barrier.wait()
        try:
            released.append(routing.refill([alice.customer.pk]))
        finally:
            connection.close()

    threads = [threading.Thread(target=release) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(released) == 25
    assert Message.objects.filter(status=Status.QUEUED).count() == 25


def test_a_backlog_is_released_a_task_sized_chunk_at_a_time(alice, settings):
    settings.MAILQ_TASK_BATCH_SIZE = 10
    set_cap(alice.customer, 40)  # chunk = min(10, 40 // 4) = 10
    messages = accepted(alice.customer, count=100)
    assert by_status(alice.customer) == {"queued": 40, "deferred": 60}
    Message.objects.filter(pk__in=[m.pk for m in messages[:9]]).update(status=Status.SENT)
    assert routing.refill([alice.customer.pk]) == 0  # 9 free slots: less than a chunk
    Message.objects.filter(pk=messages[9].pk).update(status=Status.SENT)
    assert routing.refill([alice.customer.pk]) == 10


def _indexes_used(sql: str, params) -> set[str]:
    """The indexes PostgreSQL's plan for `sql` reads (EXPLAIN, after ANALYZE)."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE delivery_message")
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    found: set[str] = set()

    def walk(node: dict) -> None:
        if "Index Name" in node:
            found.add(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def test_the_backlog_probes_read_the_backlog_index_whatever_another_customer_has_deferred(
    alice, bob
):
    """A bursting customer's backlog (release_at NULL) once sat in the due-time index too, and
    the planner probed "has this quiet customer a backlog?" through it: every quiet accept read
    the whole burst (23 ms at 56,000 deferred). The probes must stay on the backlog index."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'message_release_due'")
        (definition,) = cursor.fetchone()
    assert "release_at IS NOT NULL" in definition  # the backlog is not in it
    set_cap(alice.customer, 1)
    accepted(alice.customer, count=2000)
    quiet = bob.customer.pk
    for sql, params in ((routing._FLOW_SQL, {"c": quiet}), (routing._BACKLOGGED_SQL, [[quiet]])):
        assert not {i for i in _indexes_used(sql, params) if i.startswith("message_release")}
    assert routing.refill([quiet]) == 0 and routing._flow(bob.customer) == (0, 200)
