"""The driver-facing vocabulary: frozen dataclasses in and out, and the errors drivers raise.

Drivers (``portal/backends/*``) take and return these plain values and never import models; each
speaks its backend's own vocabulary (libvirt domains, Nova servers). Above them, one adapter per
host kind (``vms.compute``) translates model rows into specs (``InstanceSpec``) and facts
(``InstanceState``, ``ServerState``) back into rows: the one compute interface is the adapters'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ProgressCallback = Callable[[int], None]  # percent 0..100

VIRT_TYPES = ("kvm", "qemu")  # qemu = TCG (software emulation)
CPU_MODES = ("host-model", "host-passthrough", "default", "custom")
OS_TYPES = ("linux", "windows", "other")
POWER_STATES = ("running", "paused", "shutoff", "crashed", "building", "unknown")
DISK_DEVICES = ("disk", "cdrom")
DISK_BUSES = ("virtio", "sata", "ide", "scsi", "usb")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")


class BackendError(Exception):
    """A hypervisor or cloud refused or failed; ``message`` is safe to show to users."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HostUnreachable(BackendError):
    pass


class NotFound(BackendError):
    """The domain, volume, pool or snapshot does not exist (any more) on the host."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class VolumeRef:
    """A storage volume on a host: pool name, volume name and its path there."""

    pool: str
    name: str
    path: str
    capacity: int
    allocation: int


@dataclass(frozen=True)
class DiskSpec:
    """One disk or CD-ROM of an instance.

    The source is either a file ``path`` on the host or a libvirt storage ``pool`` + ``volume``
    (preferred: works the same on remote hosts). A CD-ROM may have no source at all (empty tray).
    ``bus`` and ``target`` left as ``None`` are filled in by the domain builder from the
    instance's OS type (see ``portal.backends.libvirt.domain.resolve``). ``boot_order`` is the
    per-device ``<boot order='N'/>``: 1 boots first, ``None`` is not bootable.
    """

    device: str = "disk"
    path: str | None = None
    pool: str | None = None
    volume: str | None = None
    format: str | None = None  # qcow2 for disks, raw for CD-ROMs when None
    bus: str | None = None
    target: str | None = None  # vda, sda, hdc…
    readonly: bool = False
    boot_order: int | None = None

    def __post_init__(self) -> None:
        _check(self.device in DISK_DEVICES, f"disk device must be one of {DISK_DEVICES}, not {self.device!r}")
        _check(self.bus is None or self.bus in DISK_BUSES, f"disk bus must be one of {DISK_BUSES}, not {self.bus!r}")
        _check(
            self.path is None or (self.pool is None and self.volume is None),
            "a disk has either a path or a pool/volume, not both",
        )
        _check((self.pool is None) == (self.volume is None), "pool and volume go together")
        _check(
            self.device == "cdrom" or self.path is not None or self.volume is not None,
            "a disk needs a path or a pool/volume (only a CD-ROM may be empty)",
        )
        _check(self.boot_order is None or self.boot_order >= 1, "boot_order starts at 1")

    @property
    def empty(self) -> bool:
        return self.path is None and self.volume is None


@dataclass(frozen=True)
class NicFilter:
    """The network filter a NIC references (libvirt ``<filterref>``) and its parameters, in order."""

    name: str
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FirewallRule:
    """One rule of a security group, as a network filter applies it (``nwfilter.group_filter_xml``).

    ``direction`` is ``in`` (to the guest) or ``out`` (from it); ``protocol`` ``all``, ``tcp``,
    ``udp`` or ``icmp``. Ports are a range for tcp and udp; for icmp ``port_min`` is the ICMP type
    and ``port_max`` its code. The remote side is a CIDR (``remote_cidr``), or the NICs of a
    remote group, named by their MAC addresses (``remote_macs``; incoming rules only: they match
    the sender's MAC, which anti-spoofing guarantees on the same network). A rule with a remote
    group whose group has no NIC matches nothing. A cloud applies the remote group itself
    (``remote_group_id``).
    """

    direction: str
    protocol: str = "all"
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: str | None = None
    remote_group: bool = False
    remote_macs: tuple[str, ...] = ()
    remote_group_id: str | None = None  # the remote group's UUID (a cloud maps it to its own group)


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a driver needs to define an instance (a libvirt domain).

    Memory: ``memory_mib`` is what the guest gets now (balloon target, ``<currentMemory>``),
    ``max_memory_mib`` the ceiling a live ``set_memory`` may grow to (``<memory>``); vCPUs likewise
    (``<vcpu current=…>max</vcpu>``). ``None`` maxima mean "same as current".

    Device models: ``disk_bus``/``nic_model`` left as ``None`` follow ``os_type`` — virtio disk and
    NIC for linux and other; SATA disks and an e1000 NIC for windows (which has no virtio drivers
    out of the box). Set them to ``"virtio"`` for a Windows image with the virtio drivers.

    ``metadata`` (str → str, e.g. tenant and instance ids) is stored in the domain XML under
    labcloud's own namespace and read back by the parser; it is frozen into a read-only mapping.
    """

    uuid: str
    name: str
    title: str = ""
    description: str = ""
    vcpus: int = 1
    max_vcpus: int | None = None
    memory_mib: int = 512
    max_memory_mib: int | None = None
    virt_type: str = "kvm"
    cpu_mode: str = "default"
    cpu_model: str | None = None  # for cpu_mode "custom"
    os_type: str = "linux"
    machine: str = "pc"
    arch: str = "x86_64"
    disk_bus: str | None = None
    nic_model: str | None = None
    disks: tuple[DiskSpec, ...] = ()
    network: str | None = None  # libvirt network name; None = no NIC at all
    mac_address: str | None = None
    nic_filter: NicFilter | None = None  # anti-spoofing on the NIC (portal/backends/libvirt/nwfilter.py)
    vnc_listen: str = "127.0.0.1"
    vnc_password: str | None = None
    serial_log: str | None = None  # host path the serial console is also logged to
    memballoon: bool = True
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check(bool(self.uuid), "uuid is required")
        _check(bool(self.name) and "/" not in self.name, "name must be non-empty and contain no '/'")
        _check("\n" not in self.title and "\r" not in self.title, "title must be a single line")
        _check(self.vcpus >= 1, "vcpus must be at least 1")
        _check(self.max_vcpus is None or self.max_vcpus >= self.vcpus, "max_vcpus must be at least vcpus")
        _check(self.memory_mib >= 1, "memory_mib must be positive")
        _check(
            self.max_memory_mib is None or self.max_memory_mib >= self.memory_mib,
            "max_memory_mib must be at least memory_mib",
        )
        _check(self.virt_type in VIRT_TYPES, f"virt_type must be one of {VIRT_TYPES}, not {self.virt_type!r}")
        _check(self.cpu_mode in CPU_MODES, f"cpu_mode must be one of {CPU_MODES}, not {self.cpu_mode!r}")
        _check(self.cpu_mode != "custom" or bool(self.cpu_model), "cpu_mode 'custom' needs a cpu_model")
        _check(self.os_type in OS_TYPES, f"os_type must be one of {OS_TYPES}, not {self.os_type!r}")
        _check(self.disk_bus is None or self.disk_bus in DISK_BUSES, f"disk_bus must be one of {DISK_BUSES}")
        _check(self.nic_model is None or self.nic_model in NIC_MODELS, f"nic_model must be one of {NIC_MODELS}")
        _check(
            self.vnc_password is None or len(self.vnc_password.encode()) <= 8,
            "vnc_password has at most 8 bytes (UTF-8): all VNC authentication uses",
        )
        _check(all(isinstance(d, DiskSpec) for d in self.disks), "disks must be DiskSpec values")
        _check(
            all(isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()),
            "metadata maps str to str",
        )
        object.__setattr__(self, "disks", tuple(self.disks))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def effective_max_vcpus(self) -> int:
        return self.max_vcpus if self.max_vcpus is not None else self.vcpus

    @property
    def effective_max_memory_mib(self) -> int:
        return self.max_memory_mib if self.max_memory_mib is not None else self.memory_mib


@dataclass(frozen=True)
class InstanceState:
    """What the hypervisor says about an instance right now (fact, not intent)."""

    uuid: str
    name: str
    state: str  # one of POWER_STATES
    reason: str = ""
    vcpus: int = 0
    memory_mib: int = 0  # what the guest has now (the balloon's target or actual)
    max_memory_mib: int = 0  # ``<memory>``: what the guest can use, whatever the balloon says
    vnc_host: str | None = None
    vnc_port: int | None = None


@dataclass(frozen=True)
class HostStats:
    """Raw figures of a hypervisor host at one moment; None = the hypervisor does not report it.

    CPU times are nanoseconds summed over all CPUs since boot (only grow: rates are the caller's
    business, compare two readings); memory figures are KiB (``memory_free_kib`` already counts
    buffers and page cache as free, so used = total - free).
    """

    cpu_busy_ns: int | None = None
    cpu_total_ns: int | None = None
    memory_total_kib: int | None = None
    memory_free_kib: int | None = None


@dataclass(frozen=True)
class DomainStats:
    """Raw counters of one running domain at one moment (libvirt's bulk domain stats); None = not reported.

    Counters only grow while the domain runs (they restart at 0 when it is started again); rates are
    the caller's business: compare two samples. Memory figures are KiB: ``memory_kib`` is what the
    guest has now (balloon), ``memory_available_kib``/``memory_unused_kib`` what the guest's balloon
    driver reports (only with memory stats enabled and a driver in the guest), ``memory_rss_kib`` the
    resident memory of the hypervisor process on the host.
    """

    uuid: str
    name: str
    state: str  # one of POWER_STATES
    vcpus: int | None = None
    cpu_time_ns: int | None = None
    memory_kib: int | None = None
    memory_available_kib: int | None = None
    memory_unused_kib: int | None = None
    memory_rss_kib: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


@dataclass(frozen=True)
class HostCapacity:
    """A host's size and use; the pool numbers are those of the pool asked for (None without one)."""

    hostname: str
    cpus: int
    memory_mib: int
    free_memory_mib: int
    virt_types: tuple[str, ...]
    libvirt_version: str
    hypervisor_version: str
    arch: str = ""
    pool: str | None = None
    pool_capacity: int | None = None
    pool_allocation: int | None = None
    pool_available: int | None = None


@dataclass(frozen=True)
class ConsoleTarget:
    """Where the console proxy connects to reach an instance's VNC server."""

    host: str
    port: int
    password: str | None = None


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    description: str = ""
    created: int = 0  # Unix time
    state: str = ""  # the domain state the snapshot captured: running, shutoff…
    parent: str | None = None
    current: bool = False
