"""Per-request tenancy: resolves the tenant the user works in (dashboard only; the API takes it explicitly)."""

from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from portal.selectors import active_tenant

SESSION_KEY = "active_tenant_id"


def client_ip(request) -> str | None:
    """The client's address as the audit trail records it (the web server's view; see docs/operations.md)."""
    return request.META.get("REMOTE_ADDR") or None


class ActiveTenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        def resolve():
            return active_tenant(user=request.user, tenant_id=request.session.get(SESSION_KEY))

        request.tenant = SimpleLazyObject(resolve)
        return self.get_response(request)
