"""Celery tasks: thin, take ids, safe to run twice (the claim in sending.py is the ledger)."""

import os

from celery import shared_task
from celery.signals import worker_process_shutdown, worker_shutdown

from delivery import metrics, routing, sending, sweeper


def _deliver(message_ids: list[str]) -> dict[str, int]:
    report = sending.deliver(message_ids)
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


@worker_process_shutdown.connect  # a prefork pool process
@worker_shutdown.connect  # the worker itself (the express pool's threads live in it)
def _close_provider_connections(**kwargs) -> None:
    sending.close_providers()


@worker_process_shutdown.connect
def _metrics_process_exited(**kwargs) -> None:
    metrics.process_exited(os.getpid())
