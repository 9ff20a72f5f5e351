"""Operations: long actions run by the worker, with progress the browser shows."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import MEMBER_ROLES, VIEW, RestrictedQuerySet
from portal.models import Tenant
from portal.texts import Said as Said  # re-exported: the worker's stored messages
from portal.texts import said as said
from portal.texts import translated as translated


class Operation(models.Model):
    """A long action (copy, convert, boot, snapshot…) run by a Celery task, with progress the browser shows."""

    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    uuid = models.UUIDField(_("UUID"), default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(_("kind"), max_length=64, db_index=True)
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="operations", verbose_name=_("tenant")
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    target_type = models.CharField(_("target type"), max_length=64)
    target_id = models.CharField(_("target id"), max_length=64)
    target_repr = models.CharField(_("target"), max_length=200, blank=True)
    state = models.CharField(_("state"), max_length=12, choices=State.choices, default=State.QUEUED)
    progress = models.PositiveSmallIntegerField(_("progress (%)"), default=0)
    message = models.CharField(_("step"), max_length=200, blank=True)
    message_args = models.JSONField(_("step parameters"), default=dict, blank=True)
    params = models.JSONField(_("parameters"), default=dict, blank=True)
    # What members see (a service's translated refusal, or one of the portal's own messages stored
    # untranslated and translated when shown: ``error_text``); the backend's own words, with host
    # names and URIs, go to ``error_detail``, which only cloud admins see.
    error = models.TextField(_("error"), blank=True)
    error_args = models.JSONField(_("error parameters"), default=dict, blank=True)
    error_detail = models.TextField(
        _("error detail"), blank=True, help_text=_("What the backend said; shown to cloud admins only.")
    )
    # The Celery task to send again once the broker answers (empty: its message was handed to the broker).
    unsent_task = models.CharField(_("unsent task"), max_length=200, blank=True, db_index=True)
    cancel_requested = models.BooleanField(
        _("cancel requested"), default=False, help_text=_("Someone asked to stop it (migrations can be cancelled).")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        _("last heartbeat"), null=True, blank=True, help_text=_("Last sign of life of the worker running it.")
    )

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["target_type", "target_id"], name="operation_target_idx"),
            # The notification history: a user's tenants' finished operations, newest first (vms.notifications).
            models.Index(fields=["tenant", "-finished_at"], name="operation_finished_idx"),
            # …and a cloud admin's, which is every tenant's: no tenant to lead with.
            models.Index(fields=["-finished_at", "-id"], name="operation_recent_idx"),
        ]
        verbose_name = _("operation")
        verbose_name_plural = _("operations")

    def __str__(self) -> str:
        return f"{self.kind} {self.target_repr} ({self.get_state_display()})"

    @property
    def error_text(self) -> str:
        """The error in the active language (the portal's own messages are stored untranslated)."""
        return translated(self.error, self.error_args)

    @property
    def message_text(self) -> str:
        """The current step in the active language (the portal's own messages are stored untranslated)."""
        return translated(self.message, self.message_args)

    @property
    def unsent(self) -> bool:
        """Queued, but its message never reached the broker: sent again as soon as the broker answers."""
        return bool(self.unsent_task)

    @property
    def finished(self) -> bool:
        return self.state in {self.State.SUCCEEDED, self.State.FAILED}
