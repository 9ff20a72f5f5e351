"""Template context every dashboard page gets from the compute app: the top bar's notification bell."""

from __future__ import annotations

from vms.notifications import Bell


def notifications(request) -> dict:
    """``bell``: its unread count is read only when a page shows it (one query)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"bell": Bell(user)}
