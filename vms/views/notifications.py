"""The notification history: the bell's menu (an HTML fragment its script loads), the history page, and
"mark all read". What is listed, and what is unread, is ``vms.notifications``'s."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from portal.views import safe_next
from vms.notifications import (
    badge,
    describe,
    latest_notifications,
    mark_all_read,
    notifications_for,
    seen_until,
    unread_count,
)

PAGE_SIZE = 25


@login_required
@require_GET
def notification_list(request):
    failed_only = request.GET.get("failed") == "1"
    operations = notifications_for(user=request.user, failed_only=failed_only).select_related("tenant")
    page = Paginator(operations, PAGE_SIZE).get_page(request.GET.get("page"))
    notifications = describe(list(page.object_list), user=request.user, seen=seen_until(user=request.user))
    return render(
        request,
        "vms/notifications.html",
        {"page": page, "notifications": notifications, "failed_only": failed_only},
    )


@login_required
@require_GET
@never_cache
def notification_menu(request):
    """The bell's menu: the newest notifications, and the unread count (``data-unread``) as of now."""
    unread = unread_count(user=request.user)
    return render(
        request,
        "vms/_notification_menu.html",
        {"notifications": latest_notifications(user=request.user), "unread": unread, "unread_badge": badge(unread)},
    )


@login_required
@require_POST
def notifications_read(request):
    """Mark every notification read: JSON for the bell's script, else back to the page the form was on."""
    mark_all_read(user=request.user)
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"unread": 0})
    return redirect(safe_next(request, fallback="notifications"))
