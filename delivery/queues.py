"""Queue names: one tier queue per tier (`mailq.<tier>`, from Tier.queue), and its express lane."""

EXPRESS_SUFFIX = ".express"


def express_queue(tier_queue: str) -> str:
    """The express lane of a tier, consumed by the `worker_express` processes."""
    return tier_queue + EXPRESS_SUFFIX


def is_express(queue: str) -> bool:
    return queue.endswith(EXPRESS_SUFFIX)
