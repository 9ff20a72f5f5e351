"""The one compute interface: what the services ask of a host, whatever its kind.

A host is a libvirt host or an OpenStack cloud (``Host.kind``). The services above this package
(``vms.lifecycle``, ``vms.execution``, ``vms.hosts``, the consoles, the image catalogue) never look
at the kind: they call ``compute_for(host)`` and get that kind's adapter, which speaks to the
backend's driver (``portal.backends``) and translates rows into the drivers' plain dataclasses and
facts back into rows (``vms.compute.state``).

What a backend cannot do is a missing ``Capability``: each adapter declares what a host and an
instance on it can do (``host_capabilities``, ``capabilities``; an adopted domain folds in there),
the action registry (``vms.actions``) refuses an action whose capability is missing, in one place,
and the pages never offer it. A method of a capability an adapter lacks is never called; if it were,
it refuses with ``MissingCapability`` (a 409) rather than guess.

Adding a backend kind: see docs/architecture.md ("Adding a third backend kind").
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from django.utils.translation import gettext as _

from portal.redaction import without_server_paths
from portal.services import ConflictError
from vms.models import Host

if TYPE_CHECKING:
    from images.models import ImageReplica
    from portal.backends.base import DomainStats, FirewallRule, HostStats
    from vms.models import Instance, InstanceDisk, Operation, Snapshot


class Capability(enum.StrEnum):
    """What a host (and an instance on it) can do through the portal."""

    POWER = "power"  # start, shut down, power off, reboot, hard reset
    PAUSE = "pause"  # pause and resume
    INSTALL_FROM_ISO = "install_from_iso"  # launch from an installer ISO, then finish the install
    RESIZE = "resize"  # change to another flavor
    LIVE_RESOURCES = "live_resources"  # vCPUs and RAM within the flavor, live when running
    EXTRA_DISKS = "extra_disks"  # blank disks attached and detached
    SNAPSHOTS = "snapshots"  # take and delete snapshots
    SNAPSHOT_REVERT = "snapshot_revert"  # go back to a snapshot
    CAPTURE = "capture"  # the disk of a shut-off instance into a new image
    GRAPHICAL_CONSOLE = "graphical_console"  # the VNC console in the browser
    SERIAL_CONSOLE = "serial_console"  # the serial console in the browser
    PORTAL_NETWORKS = "portal_networks"  # instances join the portal's networks
    CAPACITY = "capacity"  # the portal knows the host's size: scheduler, overcommit bars, metrics limits
    IMAGE_COPIES = "image_copies"  # admins copy images to the host ahead of launches
    METRICS = "metrics"  # the watcher samples CPU, memory, disk and network of the guests
    HOST_METRICS = "host_metrics"  # the watcher samples the host's own CPU and memory (the host page's graphs)
    TENANT_PROJECTS = "tenant_projects"  # tenants live in projects of the backend (mapped by admins)
    MIGRATE = "migrate"  # cloud admins move instances between hosts of the kind (live or cold)
    SECURITY_GROUPS = "security_groups"  # the tenant's security groups filter the instances' NICs


class MissingCapability(ConflictError):
    """The host or instance cannot do this through the portal (409)."""


@runtime_checkable
class ComputeAdapter(Protocol):
    """One per host kind. Instance methods run in the worker (``vms.execution``); host methods in the
    web process, the worker or the watcher. None of them holds a database lock across a backend call.
    """

    kind: str

    # ------------------------------------------------------------ what it can do

    def host_capabilities(self, host: Host) -> frozenset[Capability]: ...

    def capabilities(self, instance: Instance) -> frozenset[Capability]: ...

    def describe(self, host: Host) -> str: ...

    def missing_reason(self, instance: Instance, action: str) -> str: ...

    def limits_note(self, instance: Instance) -> str: ...

    # ------------------------------------------------------------ instances (the worker)

    def launch(self, operation: Operation, instance: Instance) -> str: ...

    def power(self, operation: Operation, instance: Instance, action: str) -> None: ...

    def finish_install(self, operation: Operation, instance: Instance) -> None: ...

    def resize(self, operation: Operation, instance: Instance) -> None: ...

    def set_resources(self, operation: Operation, instance: Instance) -> None: ...

    def attach_disk(self, operation: Operation, instance: Instance, disk: InstanceDisk) -> None: ...

    def detach_disk(self, operation: Operation, instance: Instance, disk: InstanceDisk) -> None: ...

    def discard_disk(self, instance: Instance, disk: InstanceDisk) -> None: ...

    def create_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None: ...

    def revert_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None: ...

    def delete_snapshot(self, operation: Operation, instance: Instance, snapshot: Snapshot) -> None: ...

    def discard_snapshot(self, instance: Instance, snapshot: Snapshot) -> None: ...

    def remove(self, instance: Instance, operation: Operation | None = None) -> None: ...

    def migrate(self, operation: Operation, instance: Instance, destination: Host) -> str: ...

    def evacuate(self, operation: Operation, instance: Instance, destination: Host) -> str: ...

    def shares_storage(self, host: Host, other: Host) -> bool: ...

    # ------------------------------------------------------------ instances (the web process)

    def console(self, instance: Instance, *, ttl: int) -> ConsoleEndpoint: ...

    def console_target(self, instance: Instance) -> ConsoleEndpoint: ...

    def capture_source(self, instance: Instance) -> Path: ...

    # ------------------------------------------------------------ hosts

    def check_host(self, host: Host) -> Host: ...

    def check_summary(self, host: Host) -> str: ...

    def location(self, host: Host) -> str: ...

    def host_facts(self, host: Host) -> list[HostFact]: ...

    def settings_fields(self) -> tuple[str, ...]: ...

    def validate_settings(self, host: Host) -> None: ...

    def apply_login(self, host: Host, *, credentials: dict[str, str], clear: bool) -> None: ...

    def forget(self, host: Host) -> None: ...

    def reconcile(self, host: Host, *, since: Any = None) -> dict[str, int]: ...

    def remove_image_copy(self, replica: ImageReplica) -> None: ...

    def guest_stats(self, host: Host) -> list[DomainStats]: ...

    def host_stats(self, host: Host) -> HostStats: ...

    def serial_console(self, host: Host, uuid: str, *, on_data, on_end): ...

    def copy_image(self, host: Host, image, *, operation=None, progress=None) -> ImageReplica: ...

    def apply_firewall(self, host: Host, plan: FirewallPlan) -> None: ...


@dataclass(frozen=True)
class FirewallPlan:
    """What one host must filter for one tenant (``vms.security_groups.firewall_plan``).

    ``groups``: (group UUID, its rules) of every group the tenant's instances there use;
    ``ports``: (instance UUID, its groups' UUIDs, in order); ``unused_groups``: UUIDs of the
    tenant's groups (or deleted ones) whose filters the host may drop when nothing uses them;
    ``tenant_id``: whose plan it is (a cloud keeps each tenant's groups in the tenant's project).
    """

    groups: tuple[tuple[str, tuple[FirewallRule, ...]], ...] = ()
    ports: tuple[tuple[str, tuple[str, ...]], ...] = ()
    unused_groups: tuple[str, ...] = ()
    tenant_id: int | None = None


@dataclass(frozen=True)
class ConsoleEndpoint:
    """Where the browser's console connects: the portal's own proxy to a VNC server (``vnc_host``/``vnc_port``
    with a one-time ``password``), or a backend's own console websocket (``url``, e.g. Nova's noVNC proxy)."""

    vnc_host: str = ""
    vnc_port: int = 0
    password: str = ""
    url: str = ""


class AdapterBase:
    """Defaults for what an adapter cannot do: each refuses with MissingCapability (never reached: the
    action registry refuses first)."""

    kind = ""

    def missing_reason(self, instance, action: str) -> str:
        """Why the instance cannot ``action`` ("attach a disk") here: said to the member who tried."""
        return _("Instance “%(name)s” runs on %(host)s, where the portal cannot %(action)s.") % {
            "name": instance.name,
            "host": self.describe(instance.host),
            "action": action,
        }

    def describe(self, host) -> str:
        """What members are told the host is: its kind, never its name (hosts are for cloud admins)."""
        return _("a host")

    def limits_note(self, instance) -> str:
        """Why some actions are not offered for the instance (its page lists them under this note)."""
        return _("This instance runs on %(host)s; the portal cannot do these there:") % {
            "host": self.describe(instance.host)
        }

    def _missing(self, what: str) -> MissingCapability:
        return MissingCapability(_("This host cannot %(action)s through the portal.") % {"action": what})

    def finish_install(self, operation, instance) -> None:
        raise self._missing(_("finish an install"))

    def set_resources(self, operation, instance) -> None:
        raise self._missing(_("change vCPUs/RAM"))

    def attach_disk(self, operation, instance, disk) -> None:
        raise self._missing(_("attach a disk"))

    def detach_disk(self, operation, instance, disk) -> None:
        raise self._missing(_("detach a disk"))

    def discard_disk(self, instance, disk) -> None:
        return None

    def migrate(self, operation, instance, destination) -> str:
        raise self._missing(_("migrate instances"))

    def evacuate(self, operation, instance, destination) -> str:
        raise self._missing(_("migrate instances"))

    def shares_storage(self, host, other) -> bool:
        """Whether the two hosts see the same disk files (an evacuation keeps the disks between them)."""
        return False

    def revert_snapshot(self, operation, instance, snapshot) -> None:
        raise self._missing(_("revert to a snapshot"))

    def discard_snapshot(self, instance, snapshot) -> None:
        return None

    def capture_source(self, instance) -> Path:
        raise self._missing(_("capture to image"))

    def console_target(self, instance) -> ConsoleEndpoint:
        """Where the portal's console proxy would connect now (``vnc_host``/``vnc_port``, no password)."""
        raise self._missing(_("open the console"))

    def guest_stats(self, host) -> list:
        raise self._missing(_("sample metrics"))

    def host_stats(self, host):
        raise self._missing(_("sample the host's metrics"))

    def serial_console(self, host, uuid, *, on_data, on_end):
        raise self._missing(_("open the serial console"))

    def copy_image(self, host, image, *, operation=None, progress=None):
        raise self._missing(_("copy images ahead of launches"))

    def apply_firewall(self, host, plan) -> None:
        raise self._missing(_("apply security groups"))


@dataclass(frozen=True)
class HostFact:
    """One line about a host on the hosts page: a label, its value, and a name for tests and styling."""

    label: str
    value: str
    key: str = ""


_ADAPTERS: dict[str, Callable[[], ComputeAdapter]] = {}
_instances: dict[str, ComputeAdapter] = {}


def register(kind: str, factory: Callable[[], ComputeAdapter]) -> None:
    """Make ``factory()`` the adapter of hosts of ``kind`` (``vms.compute`` registers the built-in kinds)."""
    _ADAPTERS[kind] = factory
    _instances.pop(kind, None)


def compute_for(host: Host) -> ComputeAdapter:
    """The adapter of the host's kind (one per process; adapters keep no per-host state but caches)."""
    adapter = _instances.get(host.kind)
    if adapter is None:
        factory = _ADAPTERS.get(host.kind)
        if factory is None:
            raise MissingCapability(_("Hosts of kind “%(kind)s” are not supported.") % {"kind": host.kind})
        adapter = _instances[host.kind] = factory()
    return adapter


def kinds_with(capability: Capability) -> list[str]:
    """The host kinds whose adapter offers ``capability`` (for queryset filters: ``kind__in``)."""
    return sorted(kind for kind in _ADAPTERS if host_can(Host(kind=kind), capability))


def given_credentials(credentials: dict) -> dict[str, str]:
    """The login values an edit gives (blank ones keep what is stored)."""
    return {k: str(v).strip() for k, v in credentials.items() if v is not None and str(v).strip()}


def host_can(host: Host, capability: Capability) -> bool:
    return capability in compute_for(host).host_capabilities(host)


def instance_capabilities(instance: Instance) -> frozenset[Capability]:
    """What the instance can do on its host (none without a host)."""
    if instance.host_id is None:
        return frozenset()
    return compute_for(instance.host).capabilities(instance)


def host_free(text: str, host: Host | None) -> str:
    """``text`` (a backend's error, shown to the tenant's members) without the host's name, URI or address,
    and without server paths. The full text belongs in the log, for the operator."""
    if host is not None:
        secrets = {host.name, host.uri}
        parts = urlsplit(host.uri or "")
        secrets |= {parts.netloc, parts.hostname or ""}
        for secret in sorted(secrets - {""}, key=len, reverse=True):
            # whole names only: a host "kvm1" leaves "kvm12" and words that merely contain it alone
            text = re.sub(rf"(?<![\w.-]){re.escape(secret)}(?![\w-])", "…", text)
    return without_server_paths(text)
