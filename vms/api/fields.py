"""Serializer fields for ids of what the requester may see: any other id "does not exist" (a 400, never a leak)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from images.selectors import images_for
from portal.access import VIEW
from vms.compute import Capability, kinds_with
from vms.models import Flavor, Host, Keypair, Network, SecurityGroup


class GatedPrimaryKeyField(serializers.PrimaryKeyRelatedField):
    """An id among the objects the requester may see; any other id "does not exist"."""

    model = None

    def _user(self):
        return getattr(self.context.get("request"), "user", None)

    def get_queryset(self):
        return self.model.objects.restrict(self._user(), VIEW)


@extend_schema_field(OpenApiTypes.INT)
class VisibleFlavorField(GatedPrimaryKeyField):
    model = Flavor


@extend_schema_field(OpenApiTypes.INT)
class VisibleImageField(GatedPrimaryKeyField):
    def get_queryset(self):
        return images_for(user=self._user())


@extend_schema_field(OpenApiTypes.INT)
class VisibleKeypairField(GatedPrimaryKeyField):
    model = Keypair


@extend_schema_field(OpenApiTypes.INT)
class VisibleNetworkField(GatedPrimaryKeyField):
    model = Network


@extend_schema_field(OpenApiTypes.INT)
class CloudHostField(GatedPrimaryKeyField):
    """The id of an OpenStack cloud (a host of kind openstack)."""

    model = Host

    def get_queryset(self):
        return super().get_queryset().filter(kind__in=kinds_with(Capability.TENANT_PROJECTS))


@extend_schema_field(OpenApiTypes.INT)
class VisibleHostField(GatedPrimaryKeyField):
    model = Host


@extend_schema_field(OpenApiTypes.INT)
class VisibleSecurityGroupField(GatedPrimaryKeyField):
    model = SecurityGroup
