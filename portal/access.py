"""The one access gate.

Every tenant-owned object is fetched through ``Model.objects.restrict(user, action)``:
the HTML views, the API, the admin site for non-staff and the websocket consumers
all call it, so visibility is decided in exactly one place.

A model opts in by using ``RestrictedQuerySet.as_manager()`` and declaring

* ``access_tenant_field`` – the lookup path from the model to its Tenant
  (``"tenant"``, ``"instance__tenant"`` …), and
* ``access_policy`` – which tenant roles may perform which action
  (``{"view": MEMBER_ROLES, "change": ADMIN_ROLES}``). An action missing from the
  policy is allowed to cloud admins only.

Cloud admins (Django staff) may do everything. Objects of a tenant the user does not
belong to are simply not in the queryset, so views answer 404 for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

ROLE_MEMBER = "member"
ROLE_ADMIN = "admin"
MEMBER_ROLES = frozenset({ROLE_MEMBER, ROLE_ADMIN})
ADMIN_ROLES = frozenset({ROLE_ADMIN})
NO_ROLES: frozenset[str] = frozenset()

VIEW = "view"
ADD = "add"
CHANGE = "change"
DELETE = "delete"


def is_cloud_admin(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def tenant_ids_for(user: AbstractBaseUser | AnonymousUser | None, roles: frozenset[str]) -> models.QuerySet:
    """Subquery of the ids of enabled tenants where ``user`` holds one of ``roles``."""
    from portal.models import Membership

    return Membership.objects.filter(user=user, role__in=roles, tenant__enabled=True).values("tenant_id")


class RestrictedQuerySet(models.QuerySet):
    def restrict(self, user: AbstractBaseUser | AnonymousUser | None, action: str = VIEW) -> RestrictedQuerySet:
        if user is None or not user.is_authenticated or not user.is_active:
            return self.none()
        if is_cloud_admin(user):
            return self
        return self._restrict_for_member(user, action)

    def _restrict_for_member(self, user: AbstractBaseUser, action: str) -> RestrictedQuerySet:
        roles = self.model.access_policy.get(action, NO_ROLES)
        if not roles:
            return self.none()
        field = self.model.access_tenant_field
        return self.filter(**{f"{field}__in": tenant_ids_for(user, roles)})
