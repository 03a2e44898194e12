"""Message endpoints. Thin: a serializer validates, one intake/domain function acts."""

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import intake, routing, stats
from delivery.api.serializers import (
    AcceptedSerializer,
    AttemptSerializer,
    BatchResultSerializer,
    BatchSerializer,
    MessageFilterSerializer,
    MessageSerializer,
    SendSerializer,
    StatsFilterSerializer,
    StatsSerializer,
)
from delivery.models import REDRIVABLE, Message
from mailq.errors import (
    ApiError,
    Conflict,
    UnknownTemplate,
    Unprocessable,
    error_body,
    flatten_detail,
)

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Same key and same body: the same message, sent once.",
)


class NotRedrivable(Conflict):
    code = "not_redrivable"


_DATETIME = serializers.DateTimeField()


def _accepted(message: Message) -> dict:
    """AcceptedSerializer's answer, built directly: a serializer instance per message costs
    more CPU than the rest of a single send's answer (its fields are deep-copied each time)."""
    send_at = message.send_at
    return {
        "id": str(message.id),
        "status": str(message.status),
        "accepted_at": _DATETIME.to_representation(message.accepted_at),
        "send_at": None if send_at is None else _DATETIME.to_representation(send_at),
    }


class MessagePagination(CursorPagination):
    ordering = "-accepted_at"
    page_size = 100
    max_page_size = 500
    page_size_query_param = "limit"


class MessagesView(APIView):
    def throttle_messages(self, request: Request) -> int:
        """Messages this request sends (customers/throttling.py): a POST sends one."""
        return 1 if request.method == "POST" else 0

    @extend_schema(
        request=SendSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={202: AcceptedSerializer},
        operation_id="send_message",
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 255:
            raise Unprocessable(
                "Idempotency-Key is too long.", {"Idempotency-Key": ["At most 255 characters."]}
            )
        serializer = SendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message, replayed = intake.accept_one(
            request.user, serializer.to_send_request(), key, request.data
        )
        response = Response(_accepted(message), status=status.HTTP_202_ACCEPTED)
        if replayed:
            response["Idempotent-Replayed"] = "true"
        return response

    @extend_schema(
        parameters=[MessageFilterSerializer],
        responses={200: MessageSerializer(many=True)},
        operation_id="list_messages",
    )
    def get(self, request: Request) -> Response:
        filters = MessageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        query = Message.objects.owned_by(request.user).select_related("template_version__template")
        if "status" in filters.validated_data:
            query = query.filter(status=filters.validated_data["status"])
        if "since" in filters.validated_data:
            query = query.filter(accepted_at__gte=filters.validated_data["since"])
        if "template" in filters.validated_data:
            query = query.filter(
                template_version__template__slug=filters.validated_data["template"]
            )
        paginator = MessagePagination()
        page = paginator.paginate_queryset(query, request, view=self)
        return paginator.get_paginated_response(MessageSerializer(page, many=True).data)


class BatchView(APIView):
    def throttle_messages(self, request: Request) -> int:
        """The batch's items: each costs a unit of the rate limit and of the quotas."""
        items = request.data.get("messages") if isinstance(request.data, dict) else None
        if not isinstance(items, list) or not items:
            return 0  # invalid: the serializer answers 422; the request costs one unit
        return min(len(items), settings.MAILQ_BATCH_MAX_ITEMS)

    @extend_schema(
        request=BatchSerializer,
        responses={202: BatchResultSerializer},
        operation_id="send_batch",
    )
    def post(self, request: Request) -> Response:
        envelope = BatchSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        items: list = []
        # One serializer validates every item (what is_valid does, without building and
        # deep-copying its fields again for each of up to MAILQ_BATCH_MAX_ITEMS items).
        item = SendSerializer()
        for raw in envelope.validated_data["messages"]:
            if not isinstance(raw, dict):
                errors = {"non_field_errors": ["Each message must be a JSON object."]}
            else:
                item.initial_data = raw  # StrictSerializer reads it for unknown fields
                try:
                    items.append(SendSerializer.send_request(item.run_validation(raw)))
                    continue
                except serializers.ValidationError as exc:
                    errors = exc.detail
            # Nested errors stay nested, exactly as a single send reports them.
            items.append(Unprocessable("The message is invalid.", flatten_detail(errors)))
        results = intake.accept_many(request.user, items)
        body = [
            error_body(r.code, r.message, r.fields) if isinstance(r, ApiError) else _accepted(r)
            for r in results
        ]
        accepted = sum(1 for r in results if not isinstance(r, ApiError))
        return Response(
            {"accepted": accepted, "rejected": len(results) - accepted, "results": body},
            status=status.HTTP_202_ACCEPTED,
        )


def _owned(request: Request, message_id) -> Message:
    """The caller's message; another customer's id is a 404, as is an unknown one."""
    return get_object_or_404(
        Message.objects.owned_by(request.user).select_related("template_version__template"),
        pk=message_id,
    )


class MessageDetailView(APIView):
    @extend_schema(responses={200: MessageSerializer}, operation_id="get_message")
    def get(self, request: Request, message_id) -> Response:
        message = _owned(request, message_id)
        body = MessageSerializer(message).data
        body["delivery_attempts"] = AttemptSerializer(
            message.delivery_attempts.all(), many=True
        ).data
        return Response(body)

    @extend_schema(responses={200: MessageSerializer}, operation_id="cancel_message")
    def delete(self, request: Request, message_id) -> Response:
        message = _owned(request, message_id)
        intake.cancel(message)
        return Response(MessageSerializer(message).data)


class StatsView(APIView):
    @extend_schema(
        parameters=[StatsFilterSerializer],
        responses={200: StatsSerializer},
        operation_id="get_stats",
    )
    def get(self, request: Request) -> Response:
        """Your delivery latency (p50/p95/p99) and counts per status, last hour and last day."""
        filters = StatsFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        slug = filters.validated_data.get("template")
        where = stats.scope(request.user.pk, slug)
        if where is None:
            raise UnknownTemplate(
                f"No template {slug!r}.", {"template": [f"Unknown template {slug!r}."]}
            )
        return Response(StatsSerializer(stats.report(where, timezone.now())).data)


class MessageRedriveView(APIView):
    @extend_schema(
        request=None,
        responses={202: MessageSerializer},
        operation_id="redrive_message",
        description="Send a `dead` or `failed` message again, with a fresh set of attempts.",
    )
    def post(self, request: Request, message_id) -> Response:
        message = _owned(request, message_id)
        if not routing.redrive([message.pk]):
            message.refresh_from_db()
            raise NotRedrivable(
                f"The message is {message.status}; only {' or '.join(REDRIVABLE)} messages "
                "can be redriven.",
                {"status": [message.status]},
            )
        message.refresh_from_db()
        return Response(MessageSerializer(message).data, status=status.HTTP_202_ACCEPTED)
