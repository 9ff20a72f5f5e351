from __future__ import annotations

from portal.selectors import memberships_of, tenants_for_user


def tenancy(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}

    tenant = request.tenant
    tenant = tenant if tenant else None  # unwrap the lazy object; None when the user has no tenant

    def switchable():
        if user.is_staff:
            return list(tenants_for_user(user=user).filter(enabled=True))
        return [m.tenant for m in memberships_of(user=user)]

    return {"active_tenant": tenant, "switchable_tenants": switchable}
