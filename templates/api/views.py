"""Template endpoints: CRUD (every change a new version) and preview."""

from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailq.errors import Conflict, RenderFailed
from templates.api.serializers import (
    PreviewRequestSerializer,
    PreviewSerializer,
    TemplateContentSerializer,
    TemplateCreateSerializer,
    TemplateSerializer,
)
from templates.models import EmailTemplate
from templates.rendering import RenderError, render


class TemplateExists(Conflict):
    code = "template_exists"


class TemplatePagination(CursorPagination):
    ordering = "-created_at"
    page_size = 100


def _owned(request: Request):
    return EmailTemplate.objects.owned_by(request.user).select_related("current_version")


class TemplatesView(APIView):
    @extend_schema(responses={200: TemplateSerializer(many=True)}, operation_id="list_templates")
    def get(self, request: Request) -> Response:
        paginator = TemplatePagination()
        page = paginator.paginate_queryset(_owned(request), request, view=self)
        return paginator.get_paginated_response(TemplateSerializer(page, many=True).data)

    @extend_schema(
        request=TemplateCreateSerializer,
        responses={201: TemplateSerializer},
        operation_id="create_template",
    )
    def post(self, request: Request) -> Response:
        serializer = TemplateCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            with transaction.atomic():
                template = EmailTemplate.objects.create(
                    customer=request.user, slug=data["slug"], name=data.get("name", "")
                )
                template.add_version(data["subject"], data["html"], data["text"])
        except IntegrityError:
            raise TemplateExists(
                f"A template {data['slug']!r} already exists.", {"slug": ["Already exists."]}
            ) from None
        return Response(TemplateSerializer(template).data, status=status.HTTP_201_CREATED)


class TemplateDetailView(APIView):
    @extend_schema(responses={200: TemplateSerializer}, operation_id="get_template")
    def get(self, request: Request, slug: str) -> Response:
        return Response(TemplateSerializer(get_object_or_404(_owned(request), slug=slug)).data)

    @extend_schema(
        request=TemplateContentSerializer,
        responses={200: TemplateSerializer},
        operation_id="update_template",
    )
    def put(self, request: Request, slug: str) -> Response:
        template = get_object_or_404(_owned(request), slug=slug)
        serializer = TemplateContentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "name" in data:
            template.name = data["name"]
            template.save(update_fields=["name"])
        template.add_version(data["subject"], data["html"], data["text"])
        return Response(TemplateSerializer(template).data)

    @extend_schema(responses={204: None}, operation_id="delete_template")
    def delete(self, request: Request, slug: str) -> Response:
        get_object_or_404(_owned(request), slug=slug).soft_delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class TemplatePreviewView(APIView):
    @extend_schema(
        request=PreviewRequestSerializer,
        responses={200: PreviewSerializer},
        operation_id="preview_template",
    )
    def post(self, request: Request, slug: str) -> Response:
        template = get_object_or_404(_owned(request), slug=slug)
        serializer = PreviewRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = template.current_version
        try:
            content = render(version, serializer.validated_data["data"])
        except RenderError as exc:
            raise RenderFailed(exc.message, {"data": [exc.message]}) from exc
        return Response(
            PreviewSerializer(
                {
                    "version": version.number,
                    "subject": content.subject,
                    "html": content.html,
                    "text": content.text,
                }
            ).data
        )
