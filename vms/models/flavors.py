"""Flavors: the sizes instances are launched with, public or shared with chosen tenants."""

from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import MEMBER_ROLES, VIEW, is_cloud_admin, tenant_ids_for
from portal.models import Tenant


class SharedWithTenantsQuerySet(models.QuerySet):
    """Objects cloud admins define and share: public ones, or private ones with a ``tenants`` list.

    Users see the usable ones (``available`` filter: e.g. not disabled) that are public or shared
    with a tenant they belong to; only cloud admins change them.
    """

    available = models.Q()

    def restrict(self, user, action: str = VIEW):
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if is_cloud_admin(user):
            return self
        if action != VIEW:
            return self.none()
        shared = models.Q(tenants__in=tenant_ids_for(user, MEMBER_ROLES))
        visible = self.filter(self.available).filter(models.Q(is_public=True) | shared)
        # The M2M join may repeat a row; select by id so the result stays a plain queryset.
        return self.filter(pk__in=visible.values("pk"))

    def usable_by(self, tenant: Tenant):
        usable = self.filter(self.available).filter(models.Q(is_public=True) | models.Q(tenants=tenant))
        return self.filter(pk__in=usable.values("pk"))


class FlavorQuerySet(SharedWithTenantsQuerySet):
    available = models.Q(disabled=False)


class Flavor(models.Model):
    name = models.CharField(_("name"), max_length=100, unique=True)
    vcpus = models.PositiveIntegerField(_("vCPUs"), validators=[MinValueValidator(1)])
    ram_mib = models.PositiveIntegerField(_("RAM (MiB)"), validators=[MinValueValidator(16)])
    disk_gib = models.PositiveIntegerField(_("disk (GiB)"), validators=[MinValueValidator(1)])
    description = models.CharField(_("description"), max_length=255, blank=True)
    is_public = models.BooleanField(_("public"), default=True)
    tenants = models.ManyToManyField(
        Tenant,
        blank=True,
        related_name="private_flavors",
        verbose_name=_("tenants with access"),
        help_text=_("Tenants that may use this flavor when it is not public."),
    )
    disabled = models.BooleanField(_("disabled"), default=False, help_text=_("Disabled flavors cannot be launched."))
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = FlavorQuerySet.as_manager()

    class Meta:
        ordering = ["vcpus", "ram_mib", "disk_gib", "name"]
        verbose_name = _("flavor")
        verbose_name_plural = _("flavors")

    def __str__(self) -> str:
        return self.name
