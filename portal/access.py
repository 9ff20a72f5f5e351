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

One object is fetched with ``access_by_id`` (each app has its ``access_<kind>_by_id`` helpers on top
of it, used alike by pages, the API and websocket consumers), with one rule: an object the user may
not see does not exist (404); one they may see but not act on is forbidden (403).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import apps
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404

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

MAX_ID = 2**63 - 1  # ids beyond the 64-bit range cannot exist (and would overflow some database drivers)


def is_cloud_admin(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def tenant_ids_for(user: AbstractBaseUser | AnonymousUser | None, roles: frozenset[str]) -> models.QuerySet:
    """Subquery of the ids of enabled tenants where ``user`` holds one of ``roles``."""
    # The model by name: the tenancy models use this module's queryset, so it cannot import them.
    membership = apps.get_model("portal", "Membership")
    return membership.objects.filter(user=user, role__in=roles, tenant__enabled=True).values("tenant_id")


def access_by_id(queryset: models.QuerySet, *, user, pk, action: str = VIEW, field: str = "pk"):
    """The object whose ``field`` (its id, or a foreign key's such as a quota's ``tenant``) is ``pk`` among
    ``queryset`` (what ``user`` may see), if ``user`` may ``action`` it.

    Http404 when it is not among them (or ``pk`` is no id), PermissionDenied (403) when the user may see
    it but not ``action`` it (``Model.objects.restrict``).
    """
    if isinstance(pk, str):
        pk = int(pk) if pk.isdigit() else 0
    if not isinstance(pk, int) or not 0 < pk <= MAX_ID:
        raise Http404
    found = queryset.filter(**{field: pk}).first()
    if found is None:
        raise Http404
    if action != VIEW and not queryset.model.objects.restrict(user, action).filter(pk=found.pk).exists():
        raise PermissionDenied
    return found


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
