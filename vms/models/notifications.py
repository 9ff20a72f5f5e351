"""How far each user has read the notification history (``vms.notifications``)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class NotificationMark(models.Model):
    """A user's "seen up to": the operations that finished after ``seen_until`` are their unread notifications.

    One row per user, written when they mark their notifications read; no row: everything that finished after
    they joined is unread. The notifications themselves are the finished ``Operation`` rows (no row per event).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_mark",
        verbose_name=_("user"),
    )
    seen_until = models.DateTimeField(_("seen until"))

    class Meta:
        verbose_name = _("notification mark")
        verbose_name_plural = _("notification marks")

    def __str__(self) -> str:
        return f"{self.user_id}: {self.seen_until:%Y-%m-%d %H:%M:%S}"
