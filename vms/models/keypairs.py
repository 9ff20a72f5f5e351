"""SSH keypairs of tenants, injected into guests at launch."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import CHANGE, MEMBER_ROLES, VIEW, RestrictedQuerySet
from portal.models import Tenant


class Keypair(models.Model):
    """An SSH public key of a tenant, injected into guests through the cloud-init seed."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="keypairs", verbose_name=_("tenant"))
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("owner")
    )
    name = models.CharField(_("name"), max_length=100)
    public_key = models.TextField(_("public key"))
    fingerprint = models.CharField(_("fingerprint"), max_length=100)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="keypair_unique_name_per_tenant")]
        verbose_name = _("keypair")
        verbose_name_plural = _("keypairs")

    def __str__(self) -> str:
        return self.name
