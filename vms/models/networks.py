"""Networks admins define and share with tenants."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.models import Tenant
from vms.models.flavors import SharedWithTenantsQuerySet


class NetworkQuerySet(SharedWithTenantsQuerySet):
    """Admins define networks; members see the public ones and those shared with their tenants."""


class Network(models.Model):
    """An admin-defined libvirt network, created on each host on first use."""

    class Mode(models.TextChoices):
        NAT = "nat", _("NAT")
        ISOLATED = "isolated", _("Isolated")
        BRIDGE = "bridge", _("Existing bridge")

    name = models.CharField(_("name"), max_length=100, unique=True)
    libvirt_name = models.CharField(
        _("libvirt network name"), max_length=100, unique=True, help_text=_("The network's name on every host.")
    )
    mode = models.CharField(_("mode"), max_length=12, choices=Mode.choices, default=Mode.ISOLATED)
    bridge = models.CharField(_("bridge"), max_length=15, blank=True, help_text=_("Host bridge for mode “bridge”."))
    cidr = models.CharField(_("subnet (CIDR)"), max_length=43, blank=True, help_text=_("e.g. 192.168.150.0/24"))
    dhcp = models.BooleanField(_("DHCP"), default=True)
    description = models.CharField(_("description"), max_length=255, blank=True)
    is_public = models.BooleanField(_("shared with all tenants"), default=False)
    tenants = models.ManyToManyField(Tenant, blank=True, related_name="networks", verbose_name=_("tenants with access"))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = NetworkQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("network")
        verbose_name_plural = _("networks")

    def __str__(self) -> str:
        return self.name
