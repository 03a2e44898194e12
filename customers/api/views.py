"""The customer's own limits and usage."""

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from customers import quotas
from customers.api.serializers import UsageSerializer


class UsageView(APIView):
    @extend_schema(responses={200: UsageSerializer}, operation_id="get_usage")
    def get(self, request: Request) -> Response:
        """Rate limit, and exact usage of the daily and monthly quotas (UTC periods)."""
        limits = request.user.limits
        day, month = quotas.usage(request.user)
        rate = {"per_second": limits.rate_per_second, "burst": limits.burst}
        return Response(UsageSerializer({"rate": rate, "day": day, "month": month}).data)
