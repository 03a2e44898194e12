"""Queue names and declarations: one durable queue per tier (`mailq.<tier>`, from Tier.queue),
its express lane, and the maintenance queue.

A queue already on the broker with other arguments (declared by an older version, or by
hand) makes every declaration fail with PRECONDITION_FAILED and would stop a worker from
starting. `ensure` replaces such a queue; the tasks it held carried only ids, so the queued
messages of that queue are marked unpublished and the sweeper publishes them again (a
duplicate task is harmless: the claim lets one delivery through).
"""

import logging
from collections.abc import Iterable

from customers.models import Tier
from delivery.models import Message, Status
from mailq.celery import app

EXPRESS_SUFFIX = ".express"
# Lanes, as metrics and the dashboard label them: a tier's pool, or its express lane.
BULK, EXPRESS = "bulk", "express"

log = logging.getLogger(__name__)


def express_queue(tier_queue: str) -> str:
    """The express lane of a tier, consumed by the `worker_express` processes."""
    return tier_queue + EXPRESS_SUFFIX


def is_express(queue: str) -> bool:
    return queue.endswith(EXPRESS_SUFFIX)


# queue name -> tier name, per process. Tier queues are rarely renamed: a miss reloads the table.
_tier_names: dict[str, str] = {}


def tier_and_lane(queue: str) -> tuple[str, str]:
    """The tier name and lane of a message's queue (a queue no tier names is its own label)."""
    lane = EXPRESS if is_express(queue) else BULK
    base = queue.removesuffix(EXPRESS_SUFFIX)
    name = _tier_names.get(base)
    if name is None:
        _tier_names.update(Tier.objects.values_list("queue", "name"))
        name = _tier_names.get(base, base)
    return name, lane


def ensure(names: Iterable[str]) -> list[str]:
    """Declare `names` as Celery does; replace any declared differently. Returns those replaced."""
    replaced = []
    with app.connection_for_write() as conn:
        for name in names:
            queue = app.amqp.queues[name]
            try:
                queue(conn.channel()).declare()
                continue
            except conn.channel_errors as exc:
                log.warning("queue %s is declared differently (%s): replacing it", name, exc)
            conn.channel().queue_delete(name)
            queue(conn.channel()).declare()
            Message.objects.filter(status=Status.QUEUED, queue=name).update(published_at=None)
            replaced.append(name)
    return replaced
