"""Security groups of tenants: firewall rules on their instances' NICs (vms/security_groups.py)."""

from __future__ import annotations

import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.access import CHANGE, MEMBER_ROLES, VIEW, RestrictedQuerySet
from portal.models import Tenant

DEFAULT_GROUP = "default"


class SecurityGroup(models.Model):
    """A named set of rules; an instance's NICs let through what one of its groups' rules allows."""

    uuid = models.UUIDField(_("UUID"), default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="security_groups", verbose_name=_("tenant")
    )
    name = models.CharField(_("name"), max_length=100)
    description = models.CharField(_("description"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="security_group_unique_name_per_tenant")]
        verbose_name = _("security group")
        verbose_name_plural = _("security groups")

    def __str__(self) -> str:
        return self.name

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_GROUP


class SecurityGroupRule(models.Model):
    """Traffic one group lets through: a direction, a protocol, ports, and a remote CIDR or group."""

    class Direction(models.TextChoices):
        INGRESS = "ingress", _("Ingress")
        EGRESS = "egress", _("Egress")

    class Protocol(models.TextChoices):
        ANY = "any", _("Any")
        TCP = "tcp", _("TCP")
        UDP = "udp", _("UDP")
        ICMP = "icmp", _("ICMP")

    group = models.ForeignKey(
        SecurityGroup, on_delete=models.CASCADE, related_name="rules", verbose_name=_("security group")
    )
    direction = models.CharField(_("direction"), max_length=7, choices=Direction.choices)
    protocol = models.CharField(_("protocol"), max_length=4, choices=Protocol.choices, default=Protocol.ANY)
    port_min = models.PositiveIntegerField(
        _("port from"),
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(65535)],
        help_text=_("TCP/UDP: first port. ICMP: the type. Empty: all."),
    )
    port_max = models.PositiveIntegerField(
        _("port to"),
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(65535)],
        help_text=_("TCP/UDP: last port. ICMP: the code. Empty: as “port from”."),
    )
    remote_cidr = models.CharField(_("remote CIDR"), max_length=18, blank=True)
    remote_group = models.ForeignKey(
        SecurityGroup,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name=_("remote group"),
    )
    description = models.CharField(_("description"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    access_tenant_field = "group__tenant"
    access_policy = {VIEW: MEMBER_ROLES, CHANGE: MEMBER_ROLES, "delete": MEMBER_ROLES}
    objects = RestrictedQuerySet.as_manager()

    class Meta:
        ordering = ["group", "direction", "protocol", "port_min", "id"]
        verbose_name = _("security group rule")
        verbose_name_plural = _("security group rules")

    def __str__(self) -> str:
        return f"{self.group}: {self.direction} {self.protocol} {self.ports_text} {self.remote_text}".strip()

    @property
    def ports_text(self) -> str:
        if self.port_min is None:
            return ""
        if self.protocol == self.Protocol.ICMP:
            return f"type {self.port_min}" + (f" code {self.port_max}" if self.port_max is not None else "")
        if self.port_max is None or self.port_max == self.port_min:
            return str(self.port_min)
        return f"{self.port_min}-{self.port_max}"

    @property
    def remote_text(self) -> str:
        if self.remote_group_id is not None:
            return str(self.remote_group)
        return self.remote_cidr or "0.0.0.0/0"
