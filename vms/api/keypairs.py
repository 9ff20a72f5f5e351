"""/api/v1/keypairs/: SSH keypairs of your tenants. Thin: keypairs_for() for reads, vms.keypairs for writes."""

from __future__ import annotations

import django_filters
from django.utils.translation import gettext_lazy as _
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.filters import SearchFilter
from rest_framework.response import Response

from portal.access import DELETE
from portal.api.base import ApiViewSetMixin
from portal.api.filtersets import TenantChoiceFilter
from portal.api.ordering import StrictOrderingFilter
from portal.api.serializers import VisibleTenantField
from portal.api.strict import StrictModelSerializer, StrictSerializer
from vms import keypairs as services
from vms.models import Keypair


class KeypairSerializer(StrictModelSerializer):
    """An SSH public key of a tenant, injected into the guests launched with it."""

    owner = serializers.CharField(
        source="owner.username", read_only=True, allow_null=True, help_text=_("Username of who added it.")
    )

    class Meta:
        model = Keypair
        fields = ["id", "name", "tenant", "owner", "public_key", "fingerprint", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"fingerprint": {"help_text": _("SHA256 fingerprint, as ssh-keygen -l prints it.")}}


class KeypairCreatedSerializer(KeypairSerializer):
    private_key = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text=_(
            "The private key (OpenSSH format) of a generated keypair. It is shown only this once and never "
            "stored; null when a public key was imported."
        ),
    )

    class Meta(KeypairSerializer.Meta):
        fields = [*KeypairSerializer.Meta.fields, "private_key"]
        read_only_fields = fields


class KeypairCreateSerializer(StrictSerializer):
    tenant = VisibleTenantField(help_text=_("Id of the tenant the keypair belongs to (one of yours)."))
    name = serializers.CharField(max_length=100)
    public_key = serializers.CharField(
        max_length=services.KEY_MAX,
        required=False,
        trim_whitespace=True,
        help_text=_(
            "An OpenSSH public key line (ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa ≥ 2048 bits) to import. "
            "Omit it to have an ed25519 keypair generated: the answer then holds the private key, once."
        ),
    )


class KeypairFilter(django_filters.FilterSet):
    tenant = TenantChoiceFilter()

    class Meta:
        model = Keypair
        fields = ["tenant"]


@extend_schema_view(
    list=extend_schema(summary=_("Keypairs of your tenants (cloud admins: all)")),
    retrieve=extend_schema(summary=_("One keypair")),
    create=extend_schema(
        summary=_("Import a public key, or generate a keypair (the private key is in this answer only)"),
        request=KeypairCreateSerializer,
        responses={201: KeypairCreatedSerializer},
    ),
    destroy=extend_schema(summary=_("Delete a keypair (running guests keep the key they got)")),
)
class KeypairViewSet(
    ApiViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """SSH keypairs. Members of a tenant see, add and delete its keypairs."""

    model = Keypair
    serializer_class = KeypairSerializer
    filterset_class = KeypairFilter
    filter_backends = [DjangoFilterBackend, SearchFilter, StrictOrderingFilter]
    search_fields = ["name", "fingerprint"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self):
        return services.keypairs_for(user=self.request.user)

    def create(self, request, *args, **kwargs):
        serializer = KeypairCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)  # a tenant the requester cannot see "does not exist"
        data = serializer.validated_data
        private_key = None
        if "public_key" in data:
            keypair = services.import_keypair(
                actor=request.user,
                tenant=data["tenant"],
                name=data["name"],
                public_key=data["public_key"],
                ip=self.client_ip,
            )
        else:
            keypair, private_key = services.generate_keypair(
                actor=request.user, tenant=data["tenant"], name=data["name"], ip=self.client_ip
            )
        body = KeypairCreatedSerializer(keypair, context=self.get_serializer_context()).data
        body["private_key"] = private_key
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"  # it may carry a private key
        return response

    def destroy(self, request, *args, **kwargs):
        keypair = self.get_object_for(DELETE)
        services.delete_keypair(actor=request.user, keypair=keypair, ip=self.client_ip)
        return Response(status=status.HTTP_204_NO_CONTENT)
