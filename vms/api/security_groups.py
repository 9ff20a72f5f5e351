"""/api/v1/security-groups/ and /api/v1/security-group-rules/: the tenants' firewall rules, as in Neutron.

Thin: reads through vms.security_groups' selectors, writes through its services. A group or rule
of a tenant the requester is not in answers 404.
"""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.filters import SearchFilter
from rest_framework.response import Response

from portal.access import CHANGE, DELETE
from portal.api.base import ApiViewSetMixin
from portal.api.filtersets import TenantChoiceFilter
from portal.api.ordering import StrictOrderingFilter
from portal.api.serializers import VisibleTenantField
from portal.api.strict import StrictModelSerializer, StrictSerializer
from vms import security_groups as services
from vms.api.fields import VisibleSecurityGroupField
from vms.models import SecurityGroup, SecurityGroupRule


class SecurityGroupRuleSerializer(StrictModelSerializer):
    """Traffic a group lets through. Without ports: every port; without a remote: 0.0.0.0/0."""

    group = serializers.PrimaryKeyRelatedField(read_only=True, help_text=_("Id of the group it belongs to."))
    remote_group = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text=_("Id of the remote group (ingress rules), or null.")
    )

    class Meta:
        model = SecurityGroupRule
        fields = [
            "id",
            "group",
            "direction",
            "protocol",
            "port_min",
            "port_max",
            "remote_cidr",
            "remote_group",
            "description",
            "created_at",
        ]
        read_only_fields = fields


class SecurityGroupSerializer(StrictModelSerializer):
    """A tenant's named set of rules; instances let through what one of their groups allows."""

    rules = SecurityGroupRuleSerializer(many=True, read_only=True)
    instance_count = serializers.IntegerField(read_only=True, help_text=_("Instances in the group."))

    class Meta:
        model = SecurityGroup
        fields = ["id", "uuid", "name", "description", "tenant", "rules", "instance_count", "created_at"]
        read_only_fields = fields


class SecurityGroupCreateSerializer(StrictSerializer):
    tenant = VisibleTenantField(help_text=_("Id of the tenant the group belongs to (one of yours)."))
    name = serializers.CharField(max_length=services.NAME_MAX)
    description = serializers.CharField(max_length=services.DESCRIPTION_MAX, required=False, allow_blank=True)


class SecurityGroupUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=services.NAME_MAX, required=False)
    description = serializers.CharField(max_length=services.DESCRIPTION_MAX, required=False, allow_blank=True)


class RuleCreateSerializer(StrictSerializer):
    group = VisibleSecurityGroupField(help_text=_("Id of the group the rule goes into."))
    direction = serializers.ChoiceField(choices=SecurityGroupRule.Direction.choices)
    protocol = serializers.ChoiceField(choices=SecurityGroupRule.Protocol.choices, default="any")
    port_min = serializers.IntegerField(
        min_value=0,
        max_value=65535,
        required=False,
        allow_null=True,
        default=None,
        help_text=_("TCP/UDP: first port (1–65535). ICMP: the type (0–255). Null: all."),
    )
    port_max = serializers.IntegerField(
        min_value=0,
        max_value=65535,
        required=False,
        allow_null=True,
        default=None,
        help_text=_("TCP/UDP: last port. ICMP: the code. Null: as port_min."),
    )
    remote_cidr = serializers.CharField(
        max_length=18, required=False, allow_blank=True, default="", help_text=_("An IPv4 network, e.g. 10.0.0.0/24.")
    )
    remote_group = VisibleSecurityGroupField(
        required=False,
        allow_null=True,
        default=None,
        help_text=_("Id of a group of the same tenant whose instances may connect (ingress rules)."),
    )
    description = serializers.CharField(max_length=services.DESCRIPTION_MAX, required=False, allow_blank=True)


class GroupFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()

    class Meta:
        model = SecurityGroup
        fields = ["tenant"]


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 2**31 - 1})
class GroupIdFilter(django_filters.NumberFilter):
    """A security group id: a whole number from 1."""


class RuleFilter(django_filters.FilterSet):
    group = GroupIdFilter(field_name="group_id", min_value=1, max_value=2**31 - 1)

    class Meta:
        model = SecurityGroupRule
        fields = ["group", "direction", "protocol"]


@extend_schema_view(
    list=extend_schema(summary=_("Security groups of your tenants (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One security group, with its rules")),
    create=extend_schema(
        summary=_("Create a security group (it allows all egress and no ingress until rules say so)"),
        request=SecurityGroupCreateSerializer,
        responses={201: SecurityGroupSerializer},
    ),
    partial_update=extend_schema(
        summary=_("Rename or describe a security group"),
        request=SecurityGroupUpdateSerializer,
        responses={200: SecurityGroupSerializer},
    ),
    destroy=extend_schema(summary=_("Delete a security group that no instance uses")),
)
class SecurityGroupViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Security groups. Members of a tenant see, create, change and delete its groups."""

    model = SecurityGroup
    serializer_class = SecurityGroupSerializer
    filterset_class = GroupFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return services.security_groups_for(user=self.request.user).prefetch_related("rules")

    def _input(self, serializer_class):
        serializer = serializer_class(data=self.request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def _answer(self, group: SecurityGroup, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=group.pk)
        return Response(self.get_serializer(fresh).data, status=code)

    def create(self, request, *args, **kwargs):
        data = self._input(SecurityGroupCreateSerializer)
        group = services.create_security_group(actor=request.user, ip=self.client_ip, **data)
        return self._answer(group, status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        group = self.get_object_for(CHANGE)
        data = self._input(SecurityGroupUpdateSerializer)
        services.update_security_group(actor=request.user, group=group, ip=self.client_ip, **data)
        return self._answer(group)

    def destroy(self, request, *args, **kwargs):
        group = self.get_object_for(DELETE)
        services.delete_security_group(actor=request.user, group=group, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(summary=_("Rules of the security groups of your tenants")),
    retrieve=extend_schema(summary=_("One rule")),
    create=extend_schema(
        summary=_("Add a rule to a group (its instances let the traffic through within a moment)"),
        request=RuleCreateSerializer,
        responses={201: SecurityGroupRuleSerializer},
    ),
    destroy=extend_schema(summary=_("Remove a rule (the traffic it let through is cut within a moment)")),
)
class SecurityGroupRuleViewSet(
    ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Security group rules, as Neutron has them: created and deleted, never changed."""

    model = SecurityGroupRule
    serializer_class = SecurityGroupRuleSerializer
    filterset_class = RuleFilter
    filter_backends = [DjangoFilterBackend, StrictOrderingFilter]
    ordering_fields = ["created_at", "port_min"]

    def get_queryset(self):
        return services.rules_for(user=self.request.user)

    def create(self, request, *args, **kwargs):
        serializer = RuleCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        group = data.pop("group")
        if not SecurityGroup.objects.restrict(request.user, CHANGE).filter(pk=group.pk).exists():
            self.permission_denied(request, message=_("You are not allowed to do this."))
        rule = services.add_rule(actor=request.user, group=group, ip=self.client_ip, **data)
        return Response(self.get_serializer(rule).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        rule = self.get_object_for(DELETE)
        services.delete_rule(actor=request.user, rule=rule, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)
