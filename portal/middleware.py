"""Per-request tenancy: resolves the tenant the user works in (dashboard only; the API takes it explicitly);
the API's answer to a request Django finds suspicious."""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.utils.functional import SimpleLazyObject

from portal.api.exceptions import refused_request_problem
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


class ApiProblemMiddleware:
    """A request a view refuses as suspicious (``SuspiciousOperation``: a body over Django's in-memory limit)
    answers problem+json under /api/ whatever DEBUG says: with DEBUG on, Django would answer its technical
    HTML page before ``handler400`` (``portal.views.bad_request``) is asked."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith("/api/") or not isinstance(exception, SuspiciousOperation):
            return None
        if isinstance(exception, RequestDataTooBig):
            request._mark_post_parse_error()  # the body must not be read again (as Django does)
        # The security log keeps the event, as Django's own handling would.
        logging.getLogger(f"django.security.{exception.__class__.__name__}").error(
            str(exception), extra={"status_code": 400, "request": request}
        )
        return refused_request_problem(exception)
