"""Accepting messages: validate -> store -> route. And cancelling them.

`accept_one` and `accept_many` are the only ways a message enters the system. When they return,
the rows are committed in PostgreSQL (that is what a 202 promises) and the queued ones have
been handed to the broker (or will be, by the sweeper, if the broker was away). The customer's
usage is counted by the same statement that inserts them, so exactly what was stored is counted
(a replay stores nothing, so it counts nothing).
"""

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from customers import quotas
from customers.models import Customer
from delivery import routing, stats
from delivery.models import CANCELLABLE, Message, Status
from mailq import db
from mailq.errors import ApiError, Conflict, RenderFailed, UnknownTemplate
from templates.models import EmailTemplate, TemplateVersion
from templates.rendering import RenderError, render


@dataclass(frozen=True)
class SendRequest:
    """A validated send request (shape and types already checked by the serializer)."""

    template: str
    to: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    from_email: str = ""
    reply_to: str = ""
    send_at: datetime | None = None


class IdempotencyMismatch(ApiError):
    status_code = 422
    code = "idempotency_key_reused"


class NotCancellable(Conflict):
    code = "not_cancellable"


def request_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _TemplateResolver:
    """Looks up each slug once per request."""

    def __init__(self, customer: Customer) -> None:
        self.customer = customer
        self._cache: dict[str, TemplateVersion | None] = {}

    def version(self, slug: str) -> TemplateVersion | None:
        if slug not in self._cache:
            self._cache[slug] = EmailTemplate.objects.current_version(self.customer, slug)
        return self._cache[slug]


def _prepare(customer: Customer, req: SendRequest, resolver: _TemplateResolver) -> Message:
    """Build an unsaved Message, or raise Unprocessable naming the offending field."""
    version = resolver.version(req.template)
    if version is None:
        raise UnknownTemplate(
            f"No template {req.template!r}.", {"template": [f"Unknown template {req.template!r}."]}
        )
    # Render once now so a missing variable is the caller's 422, not a failed message later.
    try:
        render(version, req.data)
    except RenderError as exc:
        raise RenderFailed(exc.message, {"data": [exc.message]}) from exc
    return Message(
        customer=customer,
        template_version=version,
        to=req.to,
        data=req.data,
        from_email=req.from_email or customer.default_from or settings.MAILQ_DEFAULT_FROM,
        reply_to=req.reply_to,
        send_at=req.send_at,
        queue=customer.tier.queue,
    )


def _store(customer: Customer, messages: list[Message]) -> None:
    """Insert with one multi-row statement that also counts the usage (outside a transaction,
    that statement commits itself), then publish the queued ones."""
    routing.admit(customer, messages)
    # Inside a caller's transaction, a savepoint: a refused insert (a raced idempotency key)
    # must leave that transaction usable.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        db.insert(messages, quotas.record(customer, len(messages)))
    routing.publish_after_commit(messages)


def accept_one(
    customer: Customer, req: SendRequest, idempotency_key: str | None, payload: Any
) -> tuple[Message, bool]:
    """Accept one message. Returns (message, replayed): replayed when the key was seen before."""
    digest = request_hash(payload) if idempotency_key else ""
    if idempotency_key:
        existing = _existing(customer, idempotency_key, digest)
        if existing:
            return existing, True
    message = _prepare(customer, req, _TemplateResolver(customer))
    message.idempotency_key = idempotency_key
    message.request_hash = digest
    try:
        _store(customer, [message])
    except IntegrityError:
        # Two requests with the same key raced; the other one won. Answer as a replay.
        existing = _existing(customer, idempotency_key or "", digest)
        if existing is None:
            raise
        return existing, True
    return message, False


def _existing(customer: Customer, key: str, digest: str) -> Message | None:
    message = Message.objects.owned_by(customer).filter(idempotency_key=key).first()
    if message is not None and message.request_hash != digest:
        raise IdempotencyMismatch(
            "This Idempotency-Key was already used with a different request body.",
            {"Idempotency-Key": ["Already used with a different request body."]},
        )
    return message


def accept_many(
    customer: Customer, items: list[SendRequest | ApiError]
) -> list[Message | ApiError]:
    """Accept the valid items of a batch in one insert; invalid ones come back as errors.

    `items` may already hold errors (from the serializer); the result is in request order.
    """
    resolver = _TemplateResolver(customer)
    results: list[Message | ApiError] = []
    for item in items:
        if isinstance(item, ApiError):
            results.append(item)
            continue
        try:
            results.append(_prepare(customer, item, resolver))
        except ApiError as exc:
            results.append(exc)
    valid = [r for r in results if isinstance(r, Message)]
    if valid:
        _store(customer, valid)
    return results


_CANCEL_SQL = f"""
    UPDATE delivery_message AS m SET status = %(cancelled)s, finished_at = %(now)s
     WHERE m.id = %(id)s AND m.status = ANY(%(cancellable)s)
 RETURNING {stats.RETURNING}"""


def cancel(message: Message) -> None:
    """Cancel a message that no worker has claimed yet, and count it in the statistics (one
    statement); cancelling a cancelled message is a no-op. NotCancellable otherwise."""
    params = {
        "id": message.pk,
        "cancelled": Status.CANCELLED.value,
        "now": timezone.now(),
        "cancellable": [s.value for s in CANCELLABLE],
    }
    with connection.cursor() as cursor:
        cursor.execute(stats.with_rollup(_CANCEL_SQL), params)
    message.refresh_from_db()
    if message.status != Status.CANCELLED:
        raise NotCancellable(
            f"The message is {message.status} and can no longer be cancelled.",
            {"status": [message.status]},
        )
