"""Celery tasks: thin, take ids, safe to run twice (the claim in sending.py is the ledger).

Shutdown: the main worker process answers SIGTERM with Celery's warm shutdown (stop taking
tasks, wait for the running ones). Process managers (honcho, Heroku) send SIGTERM to every
process of the group, the pool processes included, where by default it kills a task mid-send:
an email sent but not recorded (sent again later) and the rest of its batch stuck `sending`
until the lease expires. So a pool process that is running a delivery catches SIGTERM: it
finishes the send in hand, records, and hands back the rest of its batch; an idle pool
process still exits at once, through billiard's own handler (Celery's cold shutdown relies
on that).
"""

import os
import signal
import threading

from billiard.process import current_process
from celery import shared_task
from celery.signals import worker_process_shutdown, worker_shutdown

from delivery import metrics, routing, sending, sweeper

# This pool process's state: inside a delivery, and asked to stop.
_busy = False
_stop_requested = False
_previous_sigterm_handler = None


def _stopping() -> bool:
    return _stop_requested


def _deliver(message_ids: list[str]) -> dict[str, int]:
    global _busy, _stop_requested
    if not _catch_sigterm():
        return _finish(sending.deliver(message_ids))  # Celery's warm shutdown waits for it
    _busy, _stop_requested = True, False
    try:
        return _finish(sending.deliver(message_ids, _stopping))
    finally:
        _busy = False


def _finish(report: sending.Report) -> dict[str, int]:
    # Handed back on shutdown: published again now (or by the sweeper if this fails).
    routing.publish(report.handed_back)
    # The finished messages freed in-flight slots: release those customers' next ones now,
    # before this task is acked, so a busy customer's pipeline never runs dry.
    routing.refill(report.customer_ids)
    return report.counts


@shared_task(name="delivery.tasks.deliver")
def deliver(message_id: str) -> dict[str, int]:
    """Deliver one message: the real-time path."""
    return _deliver([message_id])


@shared_task(name="delivery.tasks.deliver_batch")
def deliver_batch(message_ids: list[str]) -> dict[str, int]:
    """Deliver a chunk of one tier's messages over the worker's reused connections."""
    return _deliver(message_ids)


@shared_task(name="delivery.tasks.sweep")
def sweep() -> dict[str, int]:
    """Republish lost publishes, release due and straggling messages, reclaim leases, prune
    old statistics rollups."""
    return sweeper.sweep()


def _catch_sigterm() -> bool:
    """In a prefork pool process, route SIGTERM through `_on_sigterm` and return True. Done at
    the first task, not at process start: billiard installs its own handler after Celery's
    worker_process_init. Elsewhere (solo, threads) return False: the worker's main process
    gets SIGTERM, and Celery's own warm shutdown lets the running tasks finish."""
    global _previous_sigterm_handler
    if current_process().name == "MainProcess" or (
        threading.current_thread() is not threading.main_thread()
    ):
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        _previous_sigterm_handler = current
        signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _on_sigterm(signum: int, frame) -> None:
    global _stop_requested
    if _busy:
        _stop_requested = True  # sending.deliver stops before its next send
        return
    previous = _previous_sigterm_handler
    if callable(previous):
        previous(signum, frame)  # billiard's: exit, running `finally` blocks
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


@worker_process_shutdown.connect  # a prefork pool process
@worker_shutdown.connect  # the worker itself (the express pool's threads live in it)
def _close_provider_connections(**kwargs) -> None:
    sending.close_providers()


@worker_process_shutdown.connect
def _metrics_process_exited(**kwargs) -> None:
    metrics.process_exited(os.getpid())
