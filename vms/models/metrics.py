"""Metrics history beyond the raw points: roll-ups per time bucket (instances and hosts) and host samples.

The raw points (``InstanceMetricSample``, ``HostMetricSample``) cover the last hour; the roll-up rows
(one per owner, tier and bucket: 5 min, 30 min, 2 h) cover a day, a week and a month. The watcher
writes and prunes both in its per-host round (``vms.watcher.metrics``); ``vms.selectors`` reads them.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import MEMBER_ROLES, VIEW, RestrictedQuerySet
from vms.models.hosts import Host, InfrastructureQuerySet
from vms.models.instances import Instance


class RollupFields(models.Model):
    """What every roll-up row has: its tier (bucket length in seconds), the bucket's start and the raw points in it."""

    tier = models.PositiveIntegerField(_("bucket (s)"))
    bucket = models.DateTimeField(_("bucket start"))
    samples = models.PositiveIntegerField(_("samples"), default=0)
    cpu_percent = models.FloatField(_("CPU (%)"), null=True, blank=True, help_text=_("Average over the bucket."))
    cpu_max_percent = models.FloatField(_("CPU peak (%)"), null=True, blank=True)

    class Meta:
        abstract = True


class InstanceMetricRollup(RollupFields):
    """Averages of an instance's metrics over one bucket (the CPU peak too)."""

    instance = models.ForeignKey(
        Instance, on_delete=models.CASCADE, related_name="metric_rollups", verbose_name=_("instance")
    )
    vcpus = models.PositiveIntegerField(_("vCPUs"), default=0)
    memory_used_mib = models.FloatField(_("memory used (MiB)"), null=True, blank=True)
    memory_available_mib = models.FloatField(_("memory available (MiB)"), null=True, blank=True)
    disk_read_bps = models.FloatField(_("disk read (bytes/s)"), null=True, blank=True)
    disk_write_bps = models.FloatField(_("disk write (bytes/s)"), null=True, blank=True)
    net_rx_bps = models.FloatField(_("network received (bytes/s)"), null=True, blank=True)
    net_tx_bps = models.FloatField(_("network sent (bytes/s)"), null=True, blank=True)

    access_tenant_field = "instance__tenant"
    access_policy = {VIEW: MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["instance", "tier", "bucket"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "tier", "bucket"], name="vms_metric_rollup_bucket"),
        ]
        indexes = [models.Index(fields=["tier", "bucket"], name="vms_metric_rollup_tier")]
        verbose_name = _("instance metric roll-up")
        verbose_name_plural = _("instance metric roll-ups")

    def __str__(self) -> str:
        return f"{self.instance_id} {self.tier}s @ {self.bucket:%Y-%m-%d %H:%M}"


class HostMetricSample(models.Model):
    """One point of a host's own history: CPU, memory and running instances (``vms.watcher.metrics``)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="metric_samples", verbose_name=_("host"))
    at = models.DateTimeField(_("time"))
    interval = models.FloatField(_("interval (s)"))
    cpu_percent = models.FloatField(_("CPU (%)"), null=True, blank=True)
    memory_used_mib = models.FloatField(_("memory used (MiB)"), null=True, blank=True)
    memory_total_mib = models.FloatField(_("memory total (MiB)"), null=True, blank=True)
    instances = models.PositiveIntegerField(_("running instances"), default=0)

    objects = InfrastructureQuerySet.as_manager()

    class Meta:
        ordering = ["host", "at", "id"]
        indexes = [models.Index(fields=["host", "at"], name="vms_host_metric_host_at")]
        verbose_name = _("host metric sample")
        verbose_name_plural = _("host metric samples")

    def __str__(self) -> str:
        return f"{self.host_id} @ {self.at:%Y-%m-%d %H:%M:%S}"


class HostMetricRollup(RollupFields):
    """Averages of a host's metrics over one bucket."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="metric_rollups", verbose_name=_("host"))
    memory_used_mib = models.FloatField(_("memory used (MiB)"), null=True, blank=True)
    memory_total_mib = models.FloatField(_("memory total (MiB)"), null=True, blank=True)
    instances = models.FloatField(_("running instances"), null=True, blank=True)

    objects = InfrastructureQuerySet.as_manager()

    class Meta:
        ordering = ["host", "tier", "bucket"]
        constraints = [
            models.UniqueConstraint(fields=["host", "tier", "bucket"], name="vms_host_metric_rollup_bucket"),
        ]
        indexes = [models.Index(fields=["tier", "bucket"], name="vms_host_metric_rollup_tier")]
        verbose_name = _("host metric roll-up")
        verbose_name_plural = _("host metric roll-ups")

    def __str__(self) -> str:
        return f"{self.host_id} {self.tier}s @ {self.bucket:%Y-%m-%d %H:%M}"
