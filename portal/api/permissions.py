from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import permissions

from portal.models import ApiToken


class IsAuthenticatedWithScope(permissions.IsAuthenticated):
    """Authenticated, and a read-only token may only read."""

    message = _("This token is read-only.")

    def has_permission(self, request, view) -> bool:
        if not super().has_permission(request, view):
            return False
        token = request.auth
        if isinstance(token, ApiToken) and token.scope == ApiToken.Scope.READ:
            return request.method in permissions.SAFE_METHODS
        return True
