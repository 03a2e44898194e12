"""Celery tasks: thin, take ids, safe to run twice (the claim in sending.py is the ledger)."""

from celery import shared_task
from celery.signals import worker_process_shutdown

from delivery import sending, sweeper


@shared_task(name="delivery.tasks.deliver")
def deliver(message_id: str) -> dict[str, int]:
    """Deliver one message: the real-time path."""
    return sending.deliver([message_id])


@shared_task(name="delivery.tasks.deliver_batch")
def deliver_batch(message_ids: list[str]) -> dict[str, int]:
    """Deliver a chunk of one tier's messages over the worker's reused connections."""
    return sending.deliver(message_ids)


@shared_task(name="delivery.tasks.sweep")
def sweep() -> dict[str, int]:
    """Republish lost publishes, release due messages, reclaim expired leases."""
    return sweeper.sweep()


@worker_process_shutdown.connect
def _close_provider_connections(**kwargs) -> None:
    sending.close_providers()
