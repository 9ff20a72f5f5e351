"""Viewsets of the tenancy API (/api/v1/).

Thin by design: reads go through ``Model.objects.restrict(user, action)`` and the
selectors, writes through the keyword-only services in portal.services, whose
errors portal.api.exceptions turns into problem+json. A tenant-owned object that is
not visible answers 404; one that is visible but may not be changed answers 403.

Shared machinery (``ApiViewSetMixin``, ``ProblemAutoSchema``) lives in portal.api.base.
"""

from __future__ import annotations

from django.db.models import OuterRef, Subquery
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import NotFound
from rest_framework.filters import SearchFilter
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from portal import services
from portal.access import CHANGE, DELETE, VIEW
from portal.api.base import ApiViewSetMixin
from portal.api.filtersets import ApiTokenFilter, AuditEventFilter, MembershipFilter, QuotaFilter, TenantFilter
from portal.api.ordering import StrictOrderingFilter
from portal.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenCreateSerializer,
    ApiTokenSerializer,
    AuditEventSerializer,
    MembershipCreateSerializer,
    MembershipSerializer,
    MembershipUpdateSerializer,
    QuotaSerializer,
    QuotaUpdateSerializer,
    TenantCreateSerializer,
    TenantSerializer,
    TenantUpdateSerializer,
)
from portal.models import ApiToken, AuditEvent, Membership, Quota, Tenant
from portal.selectors import tenant_usage


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@permission_classes([AllowAny])
def not_found(request, *args, **kwargs):
    """Unknown addresses under /api/v1/ answer a problem document too, not the HTML 404 page."""
    raise NotFound(_("There is no API endpoint at this address."))


# ---------------------------------------------------------------- tenants


@extend_schema_view(
    list=extend_schema(summary=_("Tenants you belong to (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One tenant")),
    create=extend_schema(
        summary=_("Create a tenant (cloud admins)"), request=TenantCreateSerializer, responses={201: TenantSerializer}
    ),
    partial_update=extend_schema(
        summary=_("Rename or describe a tenant (tenant admins); enable or disable it (cloud admins)"),
        request=TenantUpdateSerializer,
        responses={200: TenantSerializer},
    ),
    destroy=extend_schema(summary=_("Delete a tenant that owns no instances (cloud admins)")),
)
class TenantViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Tenants. Members see their (enabled) tenants with their role; cloud admins see and manage all."""

    model = Tenant
    serializer_class = TenantSerializer
    filterset_class = TenantFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["name", "slug"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self):
        user = self.request.user
        if not user.is_authenticated:
            return Tenant.objects.none()
        role = Membership.objects.filter(tenant=OuterRef("pk"), user=user).values("role")[:1]
        return Tenant.objects.restrict(user, VIEW).annotate(role=Subquery(role))

    def _respond(self, tenant: Tenant, status_code: int = status.HTTP_200_OK) -> Response:
        tenant = self.get_queryset().get(pk=tenant.pk)  # with the requester's role
        return Response(self.get_serializer(tenant).data, status=status_code)

    def create(self, request, *args, **kwargs):
        self.require_cloud_admin(_("Only cloud admins can create tenants."))
        serializer = TenantCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        tenant = services.create_tenant(
            actor=request.user,
            name=data["name"],
            slug=data.get("slug", ""),
            description=data["description"],
            enabled=data["enabled"],
            limits=data.get("limits") or None,
            ip=self.client_ip,
        )
        return self._respond(tenant, status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        tenant = self.get_object_for(CHANGE)
        serializer = TenantUpdateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        if serializer.validated_data:
            tenant = services.update_tenant(
                actor=request.user, tenant=tenant, ip=self.client_ip, **serializer.validated_data
            )
        return self._respond(tenant)

    def destroy(self, request, *args, **kwargs):
        tenant = self.get_object_for(DELETE)
        services.delete_tenant(actor=request.user, tenant=tenant, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- memberships


@extend_schema_view(
    list=extend_schema(summary=_("Members of your tenants")),
    retrieve=extend_schema(summary=_("One membership")),
    create=extend_schema(
        summary=_("Add a user to a tenant (tenant admins of that tenant, cloud admins)"),
        request=MembershipCreateSerializer,
        responses={201: MembershipSerializer},
    ),
    partial_update=extend_schema(
        summary=_("Change a member's role (tenant admins, cloud admins)"),
        request=MembershipUpdateSerializer,
        responses={200: MembershipSerializer},
    ),
    destroy=extend_schema(summary=_("Remove a member (tenant admins, cloud admins)")),
)
class MembershipViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Who belongs to which tenant, with which role. Tenant admins manage their tenant's members."""

    model = Membership
    serializer_class = MembershipSerializer
    filterset_class = MembershipFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["user__username"]
    ordering_fields = ["created_at", "role", "user__username", "tenant__name"]

    def get_queryset(self):
        return Membership.objects.restrict(self.request.user, VIEW).select_related("tenant", "user")

    def create(self, request, *args, **kwargs):
        serializer = MembershipCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)  # a tenant the requester cannot see "does not exist"
        data = serializer.validated_data
        tenant = data["tenant"]
        # Managing a tenant's members is changing the tenant: tenant admins and cloud admins.
        if not Tenant.objects.restrict(request.user, CHANGE).filter(pk=tenant.pk).exists():
            self.permission_denied(request, message=_("Only tenant admins can add members."))
        try:
            user = services.find_user(username=data["username"])
            membership = services.add_member(
                actor=request.user, tenant=tenant, user=user, role=data["role"], ip=self.client_ip
            )
        except services.ServiceError as exc:
            if exc.field == "user":
                exc.field = "username"  # name the field of the request body
            raise
        return Response(self.get_serializer(membership).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        membership = self.get_object_for(CHANGE)
        serializer = MembershipUpdateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        membership = services.change_role(
            actor=request.user, membership=membership, role=serializer.validated_data["role"], ip=self.client_ip
        )
        return Response(self.get_serializer(membership).data)

    def destroy(self, request, *args, **kwargs):
        membership = self.get_object_for(DELETE)
        services.remove_member(actor=request.user, membership=membership, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- quotas


@extend_schema_view(
    list=extend_schema(summary=_("Quota limits and usage of your tenants")),
    retrieve=extend_schema(summary=_("Quota limits and usage of one tenant")),
    partial_update=extend_schema(
        summary=_("Change quota limits (cloud admins)"),
        request=QuotaUpdateSerializer,
        responses={200: QuotaSerializer},
    ),
)
class QuotaViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Quota limits of each tenant with the usage derived from its resources; -1 means unlimited."""

    model = Quota
    serializer_class = QuotaSerializer
    filterset_class = QuotaFilter
    ordering_fields = ["tenant__name", "updated_at"]
    lookup_field = "tenant"

    def get_queryset(self):
        return Quota.objects.restrict(self.request.user, VIEW).select_related("tenant")

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        if page is not None:  # usage of the whole page in one go
            self.usage = tenant_usage(tenant_ids=[quota.tenant_id for quota in page])
        return page

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "usage": getattr(self, "usage", None)}

    def partial_update(self, request, *args, **kwargs):
        quota = self.get_object_for(CHANGE)
        serializer = QuotaUpdateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        limits = serializer.validated_data.get("limits")
        if limits:
            quota = services.set_quota(actor=request.user, tenant=quota.tenant, limits=limits, ip=self.client_ip)
        return Response(self.get_serializer(quota).data)


# ---------------------------------------------------------------- API tokens


@extend_schema_view(
    list=extend_schema(summary=_("Your API tokens")),
    retrieve=extend_schema(summary=_("One of your API tokens")),
    create=extend_schema(
        summary=_("Create an API token; the secret is in this response only"),
        request=ApiTokenCreateSerializer,
        responses={201: ApiTokenCreatedSerializer},
    ),
    destroy=extend_schema(summary=_("Revoke an API token (it stays listed, with revoked_at set)")),
)
class ApiTokenViewSet(ApiViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your personal API tokens (`Authorization: Bearer lc_…`). Read-only tokens may only read."""

    model = ApiToken
    serializer_class = ApiTokenSerializer
    filterset_class = ApiTokenFilter
    ordering_fields = ["created_at", "name", "last_used_at", "expires_at"]

    def get_queryset(self):
        return ApiToken.objects.restrict(self.request.user)

    def create(self, request, *args, **kwargs):
        serializer = ApiTokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        parent = request.auth if isinstance(request.auth, ApiToken) else None
        token, raw = services.create_api_token(
            user=request.user, parent=parent, ip=self.client_ip, **serializer.validated_data
        )
        token.token = raw
        return Response(ApiTokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        token = self.get_object_for(DELETE)
        services.revoke_api_token(actor=request.user, token=token, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- audit trail


@extend_schema_view(
    list=extend_schema(summary=_("Audit events of the tenants you administer (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One audit event")),
)
class AuditEventViewSet(ApiViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """The audit trail: tenant admins see their tenants' events, cloud admins all, members none."""

    model = AuditEvent
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    ordering_fields = ["created_at", "action"]

    def get_queryset(self):
        return AuditEvent.objects.restrict(self.request.user, VIEW)
