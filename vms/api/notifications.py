"""/api/v1/notifications/: the notification history (``vms.notifications``): finished operations of the user's
tenants, newest first, with what is unread; "mark all read"."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from portal.api.filtersets import StrictBooleanFilter
from vms.models import Operation
from vms.notifications import UNREAD_LIMIT, describe, mark_all_read, notifications_for, seen_until, unread_count


class NotificationSerializer(serializers.Serializer):
    """A finished operation as the history shows it, its texts in the request's language."""

    id = serializers.IntegerField(read_only=True, help_text=_("The operation's id (/api/v1/operations/{id}/)."))
    kind = serializers.CharField(read_only=True, help_text=_("e.g. instance.launch."))
    label = serializers.CharField(read_only=True, help_text=_("What it did, as a noun."))
    tenant = serializers.CharField(read_only=True, help_text=_("The tenant's name (empty for infrastructure)."))
    target_type = serializers.CharField(read_only=True, help_text=_("e.g. images.image."))
    target_id = serializers.CharField(read_only=True)
    target = serializers.CharField(read_only=True, help_text=_("The target's name when the operation ran."))
    target_url = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text=_("The target's dashboard page; null when it is gone or not yours to see."),
    )
    state = serializers.ChoiceField(
        choices=[Operation.State.SUCCEEDED, Operation.State.FAILED], read_only=True, help_text=_("How it ended.")
    )
    message = serializers.CharField(
        read_only=True, source="text", help_text=_("Why it failed, or the last step of a success.")
    )
    finished_at = serializers.DateTimeField(read_only=True)
    unread = serializers.BooleanField(read_only=True, help_text=_("It finished after you last marked all read."))

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["target_url"] = data["target_url"] or None
        return data


class NotificationFilter(django_filters.FilterSet):
    failed = StrictBooleanFilter(
        method="failed_only", label=_("failed"), help_text=_("true: only the operations that failed.")
    )

    class Meta:
        model = Operation
        fields = ["failed"]

    def failed_only(self, queryset, name, value):
        return queryset.filter(state=Operation.State.FAILED) if value else queryset


UNREAD = inline_serializer(
    "NotificationUnread",
    fields={"unread": serializers.IntegerField(min_value=0, max_value=UNREAD_LIMIT, help_text=_("Counted up to 100."))},
)


@extend_schema_view(
    list=extend_schema(summary=_("Your notifications: finished operations of your tenants, newest first"))
)
class NotificationViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The notification history: the operations of your tenants that finished (cloud admins: every operation),
    newest first; ``unread`` is what finished after you last marked all read."""

    serializer_class = NotificationSerializer
    filterset_class = NotificationFilter
    # As every viewset (portal.api.base.ApiViewSetMixin), without its ordering: the history is newest first.
    parser_classes = [JSONParser]
    filter_backends = [DjangoFilterBackend]

    def get_queryset(self):
        return notifications_for(user=self.request.user).select_related("tenant")

    def list(self, request, *args, **kwargs):
        operations = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(operations)
        notifications = describe(list(page), user=request.user, seen=seen_until(user=request.user))
        return self.get_paginated_response(self.get_serializer(notifications, many=True).data)

    @extend_schema(summary=_("How many of your notifications are unread"), responses={200: UNREAD})
    @action(detail=False, methods=["get"])
    def unread(self, request):
        return Response({"unread": unread_count(user=request.user)})

    @extend_schema(summary=_("Mark all your notifications read"), request=None, responses={200: UNREAD})
    @action(detail=False, methods=["post"])
    def read(self, request):
        mark_all_read(user=request.user)
        return Response({"unread": 0})
