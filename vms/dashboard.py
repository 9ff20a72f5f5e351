"""Read-side pieces the dashboard pages share (selectors: keyword-only, no writes).

Instance counts by state and the recent operations of a tenant (both through the access gate),
host capacity bars (allocation against the overcommit limits, used by the hosts page and the
cloud admin's overview) and the translated texts static/vms/live.js needs for operation toasts.
Every function runs a fixed number of queries, whatever the number of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from django.urls import reverse
from django.utils.translation import get_language
from django.utils.translation import gettext as _

from portal.access import VIEW
from portal.models import Tenant
from vms.compute import Capability, compute_for, host_can
from vms.compute.base import HostFact
from vms.models import Host, Instance, Operation
from vms.operations import operation_labels
from vms.scheduler import HostLoad, host_loads
from vms.selectors import evacuation_loss, hosts_for

RECENT_OPERATIONS = 8
LIVE_SOCKET_PATH = "/ws/live/"  # the LiveConsumer route in portal/routing.py


def live_socket(**params: int | None) -> str:
    """The live socket's address for a page: its filters (``tenant``, ``instance``) and the page's language, in
    which the socket gives the operations' messages."""
    query = {key: value for key, value in params.items() if value}
    return f"{LIVE_SOCKET_PATH}?{urlencode({**query, 'lang': get_language()})}"


# Pages that show an operation's target, by target type; "{id}" is replaced by the target id.
TARGET_URL_NAMES = {"vms.instance": "instance_detail", "images.image": "image_detail"}
STATE_TONES = {
    Instance.State.RUNNING: "success",
    Instance.State.PAUSED: "warning",
    Instance.State.SHUTOFF: "secondary",
    Instance.State.CRASHED: "danger",
    Instance.State.ERROR: "danger",
    Instance.State.DELETING: "warning",
    Instance.State.BUILDING: "info",
}
OPERATION_TONES = {
    Operation.State.QUEUED: "secondary",
    Operation.State.RUNNING: "info",
    Operation.State.SUCCEEDED: "success",
    Operation.State.FAILED: "danger",
}


def operation_label(kind: str) -> str:
    """What an operation did, as a noun ("Snapshot" of web-1 finished): instance actions from the registry,
    the other apps' kinds from ``vms.operations.operation_labels``."""
    return operation_labels().get(kind, kind)


def target_url_templates() -> dict[str, str]:
    """Target type → URL with an ``{id}`` placeholder (for pages and for live.js)."""
    return {
        target_type: reverse(name, args=[0]).replace("/0/", "/{id}/") for target_type, name in TARGET_URL_NAMES.items()
    }


# ---------------------------------------------------------------- instances by state


@dataclass(frozen=True)
class StateCount:
    state: str
    label: str
    count: int

    @property
    def tone(self) -> str:
        return STATE_TONES.get(self.state, "info")


@dataclass(frozen=True)
class InstanceStates:
    """Instances of a tenant by state; ``states`` maps each instance id to its state (live.js keeps counts with it)."""

    counts: list[StateCount]
    states: dict[int, str]

    @property
    def total(self) -> int:
        return len(self.states)


def instance_states(*, user, tenant: Tenant) -> InstanceStates:
    """The tenant's instances the user may see, counted by state (one query)."""
    states = dict(Instance.objects.restrict(user, VIEW).filter(tenant=tenant).values_list("pk", "state").order_by())
    tally = dict.fromkeys(Instance.State.values, 0)
    for state in states.values():
        tally[state] = tally.get(state, 0) + 1
    labels = dict(Instance.State.choices)
    counts = [StateCount(state=s, label=str(labels.get(s, s)), count=n) for s, n in tally.items()]
    return InstanceStates(counts=counts, states=states)


# ---------------------------------------------------------------- recent operations


def recent_operations(*, user, tenant: Tenant, limit: int = RECENT_OPERATIONS) -> list[Operation]:
    """The tenant's newest operations the user may see (one query), each with ``label``, ``tone`` and ``target_url``."""
    visible = Operation.objects.restrict(user, VIEW).filter(tenant=tenant)
    operations = list(visible.order_by("-created_at", "-id")[:limit])
    urls = target_url_templates()
    for operation in operations:
        operation.label = operation_label(operation.kind)
        operation.tone = OPERATION_TONES.get(operation.state, "secondary")
        template = urls.get(operation.target_type)
        operation.target_url = template.replace("{id}", operation.target_id) if template else ""
    return operations


# ---------------------------------------------------------------- host capacity


@dataclass(frozen=True)
class CapacityBar:
    """Allocation of one resource of a host against its limit (physical amount × overcommit ratio)."""

    key: str
    label: str
    used: float
    limit: float
    unit: str
    physical: float | None = None
    ratio: float | None = None

    @property
    def percent(self) -> int:
        if self.limit <= 0:
            return 100 if self.used else 0
        return min(100, math.ceil(100 * self.used / self.limit))

    @property
    def level(self) -> str:
        return "danger" if self.percent >= 90 else "warning" if self.percent >= 70 else "success"

    @property
    def overcommitted(self) -> bool:
        """More allocated than the host physically has (allowed up to the ratio)."""
        return self.physical is not None and self.used > self.physical


def capacity_bars(load: HostLoad) -> list[CapacityBar]:
    host = load.host
    if not host_can(host, Capability.CAPACITY):  # the backend places and limits: no limit to draw a bar against
        return []
    gib = 1024**3
    return [
        CapacityBar("vcpus", _("vCPUs"), load.vcpus, load.vcpu_limit, "", host.cpus or 0, host.cpu_allocation_ratio),
        CapacityBar(
            "ram",
            _("RAM"),
            load.ram_mib / 1024,
            load.ram_limit / 1024,
            "GiB",
            max(0, (host.memory_mib or 0) - host.reserved_ram_mib) / 1024,
            host.ram_allocation_ratio,
        ),
        CapacityBar(
            "disk",
            _("Disk"),
            load.disk_gib,
            load.disk_limit,
            "GiB",
            (host.pool_capacity or 0) / gib,
            host.disk_allocation_ratio,
        ),
    ]


@dataclass(frozen=True)
class HostCapacity:
    host: Host
    load: HostLoad
    bars: list[CapacityBar]
    location: str
    facts: list[HostFact]
    overcommit: bool  # the portal places on the host: its overcommit ratios apply
    drain: bool = False  # its instances can migrate away (maintenance)
    evacuate: str = ""  # down, with instances to rebuild elsewhere: what an evacuation would lose (the confirmation)


def host_capacity(*, user, host_id: int | None = None) -> list[HostCapacity]:
    """Every host the user may see (or only host ``host_id``) with its allocation (two queries; cloud admins only
    see hosts)."""
    hosts = hosts_for(user=user)
    hosts = list(hosts if host_id is None else hosts.filter(pk=host_id))
    loads = host_loads(hosts)
    rows = []
    for host in hosts:
        adapter = compute_for(host)
        rows.append(
            HostCapacity(
                host=host,
                load=loads[host.pk],
                bars=capacity_bars(loads[host.pk]),
                location=adapter.location(host),
                facts=adapter.host_facts(host),
                overcommit=host_can(host, Capability.CAPACITY),
                drain=host_can(host, Capability.MIGRATE),
                evacuate=_evacuation_note(host, loads[host.pk].instances),
            )
        )
    return rows


def _evacuation_note(host: Host, instances: int) -> str:
    if host.state != Host.State.DOWN or not instances or not host_can(host, Capability.MIGRATE):
        return ""
    count, lost = evacuation_loss(host=host)
    return _(
        "Evacuate %(name)s? Its %(count)d instance(s) are rebuilt on other hosts; %(lost)d of them lose their "
        "disks (rebuilt empty from their images). Only evacuate a host that is really off."
    ) % {"name": host.name, "count": count, "lost": lost}


# ---------------------------------------------------------------- live.js


def toast_config() -> dict:
    """The texts of the operation toasts live.js shows ({what}, {target} and {error} are filled in by the script)."""
    return {
        "operations": operation_labels(),
        "toast": {
            "succeeded": _("{what} of {target} finished"),
            "failed": _("{what} of {target} failed: {error}"),
            "failedNoError": _("{what} of {target} failed"),
            "operation": _("Operation"),
            "close": _("Close"),
            "open": _("Open"),
        },
        "targetUrls": target_url_templates(),
    }


def overview_live_config(*, tenant: Tenant) -> dict:
    """What live.js needs on the overview: the tenant's socket, state and operation labels, toast texts."""
    return {
        "socket": live_socket(tenant=tenant.pk),
        "instance": None,
        "tenant": tenant.pk,
        "states": {value: str(label) for value, label in Instance.State.choices},
        "operationStates": {value: str(label) for value, label in Operation.State.choices},
        "stateTones": {str(state): tone for state, tone in STATE_TONES.items()},
        "recentLimit": RECENT_OPERATIONS,
        "text": {
            "live": _("Live"),
            "offline": _("Offline"),
            "connecting": _("Connecting…"),
            "operation": _("Operation"),
            "justNow": _("just now"),
        },
        **toast_config(),
    }
