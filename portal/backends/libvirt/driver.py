"""The libvirt compute driver: one host (one URI), instances addressed by UUID, plain dataclasses in and out.

No ORM here: services turn rows into ``InstanceSpec`` and ``InstanceState`` back into rows.

Errors: every ``libvirt.libvirtError`` leaves this module as a ``BackendError`` with a message
that says what was attempted on which instance; ``NotFound`` when the domain, volume or snapshot
is gone; ``HostUnreachable`` when the connection itself failed (the cached connection is then
dropped, so the next call reconnects — nothing is retried automatically).

Idempotence (tasks may run twice): ``start`` on a running instance, ``shutdown``/``power_off``
on a stopped one, ``pause`` on a paused one, ``resume`` on a running one are no-ops;
``undefine`` and ``delete_volume`` return False when there was nothing to remove.

Virtualization type: ``virt_types()`` lists what libvirt's capabilities offer, which is not
proof that it works: on the CI machines ``/dev/kvm`` is a nested paravirtual device
(``kvm_pvm``) on which QEMU starts but no Linux kernel ever finishes booting. ``probe_kvm()`` boots
a tiny guest under KVM and waits for its console marker; only a True result should make a host
use ``kvm`` (there it returns False, and hosts use ``qemu``, i.e. TCG).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import libvirt

from portal.backends.base import (
    BackendError,
    ConsoleTarget,
    DiskSpec,
    DomainStats,
    FirewallRule,
    HostCapacity,
    HostStats,
    HostUnreachable,
    InstanceSpec,
    InstanceState,
    NicFilter,
    NotFound,
    ProgressCallback,
    SnapshotInfo,
    VolumeRef,
)
from portal.backends.libvirt import storage
from portal.backends.libvirt.connection import connect, forget
from portal.backends.libvirt.domain import (
    DomainFacts,
    build_domain_xml,
    empty_cdrom_xml,
    find_disk,
    finish_install_xml,
    graphics_with_password,
    nics_to_filter,
    parse_domain_xml,
    parse_snapshot_domain,
    parse_snapshot_xml,
    resolve_disk,
    snapshot_xml,
    used_targets,
)
from portal.backends.libvirt.domain import (
    disk_xml as build_disk_xml,
)
from portal.backends.libvirt.nwfilter import (
    GUEST_FILTER,
    define_filter,
    ensure_guest_filter,
    group_filter_xml,
    nic_filter_for,
    port_filter_xml,
    remove_filter,
)

log = logging.getLogger(__name__)

# Snapshot <state>s of a guest that ran (libvirt starts those again on revert; "paused" stays paused).
_RUNNING_SNAPSHOT_STATES = ("running", "blocked", "shutdown")
VNC_PASSWORD_MAX = 8  # bytes: the VNC authentication scheme uses only 8 (a DES key)

_POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}


def _reasons(state: str, names: str) -> dict[int, str]:
    """Reason code → text for the space-separated constant suffixes of VIR_DOMAIN_<state>_*."""
    return {
        getattr(libvirt, f"VIR_DOMAIN_{state}_{name}"): name.lower().replace("_", " ")
        for name in names.split()
        if hasattr(libvirt, f"VIR_DOMAIN_{state}_{name}")
    }


_REASONS = {
    libvirt.VIR_DOMAIN_RUNNING: _reasons(
        "RUNNING",
        "UNKNOWN BOOTED MIGRATED RESTORED FROM_SNAPSHOT UNPAUSED MIGRATION_CANCELED SAVE_CANCELED WAKEUP CRASHED "
        "POSTCOPY",
    ),
    libvirt.VIR_DOMAIN_PAUSED: _reasons(
        "PAUSED",
        "UNKNOWN USER MIGRATION SAVE DUMP IOERROR WATCHDOG FROM_SNAPSHOT SHUTTING_DOWN SNAPSHOT CRASHED "
        "STARTING_UP POSTCOPY POSTCOPY_FAILED API_ERROR",
    ),
    libvirt.VIR_DOMAIN_SHUTOFF: _reasons(
        "SHUTOFF", "UNKNOWN SHUTDOWN DESTROYED CRASHED MIGRATED SAVED FAILED FROM_SNAPSHOT DAEMON"
    ),
    libvirt.VIR_DOMAIN_CRASHED: _reasons("CRASHED", "UNKNOWN PANICKED"),
    libvirt.VIR_DOMAIN_SHUTDOWN: {0: "shutting down", 1: "shutting down"},
    libvirt.VIR_DOMAIN_PMSUSPENDED: {0: "pm suspended"},
}

_UNREACHABLE_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
}
_UNREACHABLE_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    libvirt.VIR_ERR_NO_NETWORK,
}


class _ConsoleReader(threading.Thread):
    """Reads a domain's serial console (pty) through libvirt into lines, on a thread of its own.

    The stream is blocking (no event loop needed); it ends when the domain stops, which is how
    the owner stops the thread.
    """

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        super().__init__(name=f"console-{dom.name()}", daemon=True)
        self.stream = conn.newStream(0)
        dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.buffer = b""
        self.changed = threading.Condition()

    def run(self) -> None:
        try:
            while True:
                data = self.stream.recv(4096)
                if not isinstance(data, bytes) or not data:
                    break
                with self.changed:
                    self.buffer += data
                    self.changed.notify_all()
        except libvirt.libvirtError:
            pass

    def lines(self) -> list[str]:
        return self.buffer.decode(errors="replace").replace("\r", "").splitlines()

    def wait_for(self, marker: str, timeout: float) -> str | None:
        """The first line starting with ``marker`` within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines():
                    if line.startswith(marker):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.is_alive():
                    return None
                self.changed.wait(min(remaining, 0.5))

    def close(self) -> None:
        self.join(timeout=5)
        with contextlib.suppress(libvirt.libvirtError):
            self.stream.abort()


class LibvirtDriver:
    """Compute driver for one libvirt host. Cheap to create: the connection is cached per URI (connection.py)."""

    def __init__(self, uri: str, *, nic_filter: str = GUEST_FILTER) -> None:
        self.uri = uri
        self.nic_filter_name = nic_filter  # the portal's anti-spoofing filter on this host (nwfilter.py)

    def __repr__(self) -> str:
        return f"LibvirtDriver({self.uri!r})"

    # ------------------------------------------------------------------ plumbing

    @property
    def conn(self) -> libvirt.virConnect:
        return connect(self.uri)

    def _translate(self, exc: libvirt.libvirtError, what: str) -> BackendError:
        code, domain = exc.get_error_code(), exc.get_error_domain()
        message = exc.get_error_message() or str(exc)
        if code in _UNREACHABLE_CODES or domain in _UNREACHABLE_DOMAINS:
            forget(self.uri)
            return HostUnreachable(f"{what}: lost the connection to {self.uri}: {message}")
        if code in _NOT_FOUND_CODES:
            return NotFound(f"{what}: {message}")
        if code == libvirt.VIR_ERR_NO_SUPPORT:
            return BackendError(f"{what}: not supported by the hypervisor on {self.uri}: {message}")
        return BackendError(f"{what}: {message}")

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as exc:
            raise self._translate(exc, what) from exc

    def _dom(self, uuid: str) -> libvirt.virDomain:
        with self._errors(f"instance {uuid}"):
            try:
                return self.conn.lookupByUUIDString(str(uuid))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise NotFound(f"instance {uuid} does not exist on {self.uri}") from exc
                raise

    def _state_of(self, dom: libvirt.virDomain) -> InstanceState:
        state, reason = dom.state()
        _state, max_kib, mem_kib, vcpus, _cpu_time = dom.info()
        facts = parse_domain_xml(dom.XMLDesc(0))
        return InstanceState(
            uuid=dom.UUIDString(),
            name=dom.name(),
            state=_POWER.get(state, "unknown"),
            reason=_REASONS.get(state, {}).get(reason, ""),
            vcpus=vcpus,
            memory_mib=mem_kib // 1024,
            max_memory_mib=max_kib // 1024,
            vnc_host=self._vnc_host(facts.spec.vnc_listen) if facts.vnc_port else None,
            vnc_port=facts.vnc_port,
        )

    def _vnc_host(self, listen: str) -> str:
        if listen in ("", "0.0.0.0", "::"):  # noqa: S104 - reading a setting, not binding
            return urlparse(self.uri).hostname or "127.0.0.1"
        return listen

    def _affect(self, dom: libvirt.virDomain) -> list[int]:
        """LIVE (when running) first, then CONFIG, as separate calls: a refused live change leaves the
        config alone, and some drivers refuse both flags in one call."""
        flags = []
        if dom.isActive():
            flags.append(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if dom.isPersistent():
            flags.append(libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return flags

    # ------------------------------------------------------------------ host

    def virt_types(self) -> tuple[str, ...]:
        """Domain types libvirt offers for hvm guests of the host's architecture (e.g. ('kvm', 'qemu'))."""
        with self._errors(f"capabilities of {self.uri}"):
            caps = ET.fromstring(self.conn.getCapabilities())  # noqa: S314 - libvirt's own XML
        host_arch = caps.findtext("host/cpu/arch", "")
        found: list[str] = []
        for guest in caps.findall("guest"):
            arch = guest.find("arch")
            if guest.findtext("os_type") != "hvm" or arch is None:
                continue
            if host_arch and arch.get("name") != host_arch:
                continue
            for dom in arch.findall("domain"):
                if dom.get("type") and dom.get("type") not in found:
                    found.append(dom.get("type"))
        order = {"kvm": 0, "qemu": 1}
        return tuple(sorted(found, key=lambda t: order.get(t, 2)))

    def capacity(self, pool: str | None = None) -> HostCapacity:
        with self._errors(f"host information of {self.uri}"):
            conn = self.conn
            _model, memory_mib, cpus, *_rest = conn.getInfo()
            free = conn.getFreeMemory()
            hostname = conn.getHostname()
            lib, hyp = conn.getLibVersion(), conn.getVersion()
            caps = ET.fromstring(conn.getCapabilities())  # noqa: S314 - libvirt's own XML
        pool_numbers: tuple[int | None, int | None, int | None] = (None, None, None)
        if pool:
            with self._errors(f"storage pool {pool!r}"):
                pool_numbers = storage.pool_usage(self.uri, pool_name=pool)
        return HostCapacity(
            hostname=hostname,
            cpus=cpus,
            memory_mib=memory_mib,
            free_memory_mib=free // (1024 * 1024),
            virt_types=self.virt_types(),
            libvirt_version=_version(lib),
            hypervisor_version=_version(hyp),
            arch=caps.findtext("host/cpu/arch", ""),
            pool=pool,
            pool_capacity=pool_numbers[0],
            pool_allocation=pool_numbers[1],
            pool_available=pool_numbers[2],
        )

    def probe_kvm(self, *, pool: str, disk_volume: str, cpu_mode: str = "host-model", **kwargs) -> bool:
        """True only if a guest really boots under KVM here (see ``probe_boot``); False on the CI machines.

        On these machines ``/dev/kvm`` (kvm_pvm, nested paravirtual) cannot boot a kernel: with
        host-model/host-passthrough QEMU aborts at once (MSR 0x10a), with QEMU's default CPU the
        guest prints nothing before the timeout.
        """
        if "kvm" not in self.virt_types():
            log.info("KVM probe on %s: capabilities offer no kvm domain type", self.uri)
            return False
        return self.probe_boot("kvm", pool=pool, disk_volume=disk_volume, cpu_mode=cpu_mode, **kwargs)

    def probe_boot(
        self,
        virt_type: str,
        *,
        pool: str,
        disk_volume: str,
        marker: str = "LABCLOUD-TINY-BOOTED",
        timeout: float = 60.0,
        cpu_mode: str = "default",
        memory_mib: int = 128,
        name_prefix: str = "labcloud-probe-",
    ) -> bool:
        """True if a guest of ``virt_type`` boots: its serial console prints a line starting with ``marker`` in time.

        Boots a transient domain from a copy-on-write overlay of ``disk_volume`` (a small bootable
        image in ``pool``, e.g. the tiny test guest), reads its serial console through libvirt
        (works for remote hosts too: no log file needed), and removes domain and overlay
        afterwards. False when the domain does not start or no marker came in time.
        """
        name = f"{name_prefix}{secrets.token_hex(4)}"
        overlay_name = f"{name}.qcow2"
        base = self.find_volume(pool, disk_volume)
        if base is None:
            raise NotFound(f"boot probe: volume {disk_volume!r} not found in pool {pool!r}")
        self.create_overlay(pool, overlay_name, disk_volume, base.capacity)
        spec = InstanceSpec(
            uuid=str(uuidlib.uuid4()),
            name=name,
            title=f"{virt_type} boot probe",
            virt_type=virt_type,
            cpu_mode=cpu_mode,
            memory_mib=memory_mib,
            disks=(DiskSpec(pool=pool, volume=overlay_name, boot_order=1),),
        )
        dom = reader = None
        t0 = time.monotonic()
        try:
            try:
                dom = self.conn.createXML(build_domain_xml(spec), libvirt.VIR_DOMAIN_START_PAUSED)
                reader = _ConsoleReader(self.conn, dom)
                reader.start()
                dom.resume()
            except libvirt.libvirtError as exc:
                log.info("%s probe on %s: guest did not start: %s", virt_type, self.uri, exc.get_error_message())
                return False
            line = reader.wait_for(marker, timeout)
            if line is None:
                tail = " | ".join(reader.lines()[-5:])
                log.info(
                    "%s probe on %s: no %s within %.0f s; console ends: %s", virt_type, self.uri, marker, timeout, tail
                )
                return False
            log.info("%s probe on %s: booted in %.1f s", virt_type, self.uri, time.monotonic() - t0)
            return True
        finally:
            if dom is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()  # transient: gone with it
            if reader is not None:
                reader.close()
            with contextlib.suppress(BackendError):
                self.delete_volume(pool, overlay_name)

    # ------------------------------------------------------------------ instances

    def define(self, spec: InstanceSpec) -> InstanceState:
        """Define (or redefine, same UUID and name) the persistent domain; does not start it.

        A spec without ``vnc_password`` gets a random one: QEMU only accepts passwords later
        (``set_vnc_password``, one per console session) if its VNC server started with password
        authentication, and a VNC server without one would let anyone on the listen address in.
        """
        if not spec.vnc_password:
            spec = dataclasses.replace(spec, vnc_password=random_vnc_password())
        xml = build_domain_xml(spec)
        with self._errors(f"define instance {spec.name!r}"):
            dom = self.conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            return self._state_of(dom)

    def nic_filter(self, network: str, *, port: str | None = None) -> NicFilter | None:
        """The anti-spoofing filter of a NIC on libvirt network ``network`` (defined on the host first).

        With ``port``, the NIC's own port filter (``define_port_filter``), which references it.
        ``None`` only on a connection driver without network filters (``test:///``); see nwfilter.py.
        """
        with self._errors(f"network filter for {network!r}"):
            return nic_filter_for(self.conn, network, self.nic_filter_name, port=port)

    def define_group_filter(self, name: str, rules: Sequence[FirewallRule]) -> None:
        """Define or update (live, on every NIC using it) a security group's filter."""
        with self._errors(f"define network filter {name!r}"):
            define_filter(self.conn, name, lambda uuid: group_filter_xml(name, tuple(rules), uuid))

    def define_port_filter(self, name: str, groups: Sequence[str]) -> bool:
        """Define or update (live) a NIC's port filter over the groups' filters; False on a driver without
        network filters (``test:///``), where NICs stay unfiltered."""
        with self._errors(f"define network filter {name!r}"):
            if not ensure_guest_filter(self.conn, self.nic_filter_name):
                return False
            define_filter(
                self.conn, name, lambda uuid: port_filter_xml(name, base=self.nic_filter_name, groups=groups, uuid=uuid)
            )
            return True

    def remove_filter(self, name: str) -> bool:
        """Undefine a group or port filter; False when a running NIC still uses it."""
        with self._errors(f"remove network filter {name!r}"):
            return remove_filter(self.conn, name)

    def filter_names(self, prefix: str) -> list[str]:
        """The network filters on the host whose names start with ``prefix``."""
        with self._errors("list network filters"):
            try:
                return sorted(f.name() for f in self.conn.listAllNWFilters(0) if f.name().startswith(prefix))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return []
                raise

    def filter_nics(self, uuid: str, *, port: str | None = None) -> bool:
        """Give each NIC of the domain its anti-spoofing filter, live and in its config; True when one changed.

        For domains whose NICs were defined unfiltered (before the portal filtered them, by hand, or
        brought back by a snapshot revert): the portal runs it before it starts a domain and after a revert.
        """
        chosen: dict[str, NicFilter | None] = {}

        def wanted(network: str) -> NicFilter | None:
            if network not in chosen:
                chosen[network] = self.nic_filter(network, port=port)
            return chosen[network]

        dom = self._dom(uuid)
        changed = False
        with self._errors(f"filter the NICs of instance {uuid}"):
            for flag in self._affect(dom):
                inactive = libvirt.VIR_DOMAIN_XML_INACTIVE if flag == libvirt.VIR_DOMAIN_AFFECT_CONFIG else 0
                for nic in nics_to_filter(dom.XMLDesc(inactive), wanted):
                    dom.updateDeviceFlags(nic, flag)
                    changed = True
        return changed

    def describe(self, uuid: str, *, inactive: bool = True) -> DomainFacts:
        """The instance's domain XML parsed back (persistent config by default, else the live one)."""
        return parse_domain_xml(self.domain_xml(uuid, inactive=inactive))

    def domain_xml(self, uuid: str, *, inactive: bool = True) -> str:
        """The domain XML with secrets (VNC password); ``inactive`` for the persistent config."""
        dom = self._dom(uuid)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with self._errors(f"XML of instance {uuid}"):
            return dom.XMLDesc(flags | libvirt.VIR_DOMAIN_XML_SECURE)

    def state(self, uuid: str) -> InstanceState:
        dom = self._dom(uuid)
        with self._errors(f"state of instance {uuid}"):
            return self._state_of(dom)

    def list_instances(self) -> list[InstanceState]:
        """Every domain on the host (also ones the portal did not create: filter by UUID)."""
        with self._errors(f"list instances on {self.uri}"):
            domains = self.conn.listAllDomains(0)
        states = []
        for dom in domains:
            try:
                states.append(self._state_of(dom))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile: skip it
                    raise self._translate(exc, f"state of {dom.name()!r}") from exc
        return states

    def domain_stats(self) -> list[DomainStats]:
        """CPU, memory, disk and network counters of every running domain: one libvirt call for the whole host.

        Domains the portal did not create are included too (filter by UUID). Disk and network
        counters are summed over all of a domain's disks and interfaces.
        """
        with self._errors(f"domain statistics of {self.uri}"):
            records = self.conn.getAllDomainStats(STATS_GROUPS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        found = []
        for dom, values in records:
            try:
                uuid, name = dom.UUIDString(), dom.name()
            except libvirt.libvirtError:  # vanished between the call and now
                continue
            found.append(_domain_stats(uuid, name, values))
        return found

    def host_stats(self) -> HostStats:
        """CPU times and memory of the host itself (``virNodeGetCPUStats``/``virNodeGetMemoryStats``, all cells).

        A figure the hypervisor driver does not report (test:///default has no memory statistics) is
        None; a lost connection raises ``HostUnreachable`` like every other call.
        """
        cpu = self._node_stats(lambda: self.conn.getCPUStats(-1, 0), "CPU")
        memory = self._node_stats(lambda: self.conn.getMemoryStats(-1, 0), "memory")
        busy = total = None
        if cpu and "idle" in cpu:
            parts = [int(cpu.get(key, 0)) for key in ("kernel", "user", "iowait", "idle")]
            total = sum(parts)
            busy = total - int(cpu["idle"]) - int(cpu.get("iowait", 0))
        memory_total = memory_free = None
        if memory and "total" in memory and "free" in memory:
            memory_total = int(memory["total"])
            memory_free = int(memory["free"]) + int(memory.get("buffers", 0)) + int(memory.get("cached", 0))
        return HostStats(
            cpu_busy_ns=busy, cpu_total_ns=total, memory_total_kib=memory_total, memory_free_kib=memory_free
        )

    def _node_stats(self, call, what: str) -> dict | None:
        try:
            return call()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
                return None
            raise self._translate(exc, f"host {what} statistics of {self.uri}") from exc

    def addresses(self, uuid: str) -> list[str]:
        """IP addresses of a running instance's NICs, from the DHCP leases of its libvirt networks (no agent)."""
        dom = self._dom(uuid)
        with self._errors(f"addresses of instance {uuid}"):
            if not dom.isActive():
                return []
            try:
                interfaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0) or {}
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
                    return []
                raise
        found = []
        for _name, info in sorted(interfaces.items()):
            for addr in info.get("addrs") or []:
                if addr.get("addr") and addr["addr"] not in found:
                    found.append(addr["addr"])
        return found

    def wait_for_state(self, uuid: str, states: Iterable[str], timeout: float, interval: float = 0.2) -> InstanceState:
        """Poll until the instance is in one of ``states``; BackendError after ``timeout`` seconds."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            current = self.state(uuid)
            if current.state in wanted:
                return current
            if time.monotonic() > deadline:
                raise BackendError(
                    f"instance {uuid} is {current.state} after {timeout:.0f} s, expected {' or '.join(sorted(wanted))}"
                )
            time.sleep(interval)

    def start(self, uuid: str, *, paused: bool = False) -> InstanceState:
        dom = self._dom(uuid)
        with self._errors(f"start instance {uuid}"):
            if not dom.isActive():
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
            return self._state_of(dom)

    def shutdown(self, uuid: str) -> InstanceState:
        """Press the ACPI power button; returns at once (see ``wait_for_state``)."""
        dom = self._dom(uuid)
        with self._errors(f"shut down instance {uuid}"):
            if dom.isActive():
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:  # a driver without the flag (test:///)
                        raise
                    dom.shutdownFlags(0)
            return self._state_of(dom)

    def power_off(self, uuid: str) -> InstanceState:
        """Pull the plug (``virDomainDestroy``)."""
        dom = self._dom(uuid)
        with self._errors(f"power off instance {uuid}"):
            if dom.isActive():
                dom.destroy()
            return self._state_of(dom)

    def _require_active(self, dom: libvirt.virDomain, what: str) -> None:
        if not dom.isActive():
            raise BackendError(f"{what}: the instance is not running")

    def reboot(self, uuid: str) -> InstanceState:
        dom = self._dom(uuid)
        with self._errors(f"reboot instance {uuid}"):
            self._require_active(dom, f"reboot instance {uuid}")
            dom.reboot(0)
            return self._state_of(dom)

    def reset(self, uuid: str) -> InstanceState:
        dom = self._dom(uuid)
        with self._errors(f"reset instance {uuid}"):
            self._require_active(dom, f"reset instance {uuid}")
            dom.reset(0)
            return self._state_of(dom)

    def pause(self, uuid: str) -> InstanceState:
        dom = self._dom(uuid)
        with self._errors(f"pause instance {uuid}"):
            self._require_active(dom, f"pause instance {uuid}")
            if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                dom.suspend()
            return self._state_of(dom)

    def resume(self, uuid: str) -> InstanceState:
        dom = self._dom(uuid)
        with self._errors(f"resume instance {uuid}"):
            self._require_active(dom, f"resume instance {uuid}")
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            return self._state_of(dom)

    def undefine(self, uuid: str) -> bool:
        """Power off if needed and remove the domain with its managed save, snapshot metadata and NVRAM.

        Volumes are not touched (delete them with ``delete_volume``; internal qcow2 snapshots go
        with their volume). False when there was no such domain.
        """
        try:
            dom = self._dom(uuid)
        except NotFound:
            return False
        try:
            with self._errors(f"delete instance {uuid}"):
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefineFlags(self._undefine_flags(dom))
        except NotFound:
            return False
        return True

    @staticmethod
    def _undefine_flags(dom: libvirt.virDomain) -> int:
        """Only the flags this domain needs: some drivers refuse flags they do not know."""
        flags = 0
        if dom.hasManagedSaveImage(0):
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        if dom.snapshotNum(0) > 0:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("os/nvram") is not None:  # noqa: S314
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        with contextlib.suppress(libvirt.libvirtError, AttributeError):  # checkpoints: libvirt >= 5.6
            if dom.listAllCheckpoints(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        return flags

    # ------------------------------------------------------------------ resize

    def set_vcpus(self, uuid: str, count: int) -> InstanceState:
        """Set the vCPU count within the instance's maximum: live (hot-add) when running, and in the config."""
        dom = self._dom(uuid)
        maximum = self.describe(uuid).spec.effective_max_vcpus
        if not 1 <= count <= maximum:
            raise BackendError(f"instance {uuid}: {count} vCPUs is outside 1…{maximum} (its maximum)")
        live = dom.isActive()
        with self._errors(f"set vCPUs of instance {uuid} to {count}{' live' if live else ''}"):
            for flags in self._affect(dom):
                dom.setVcpusFlags(count, flags)
            return self._state_of(dom)

    def set_memory(self, uuid: str, memory_mib: int) -> InstanceState:
        """Set the memory (balloon target) within the instance's maximum: live when running, and in the config."""
        dom = self._dom(uuid)
        maximum = self.describe(uuid).spec.effective_max_memory_mib
        if not 1 <= memory_mib <= maximum:
            raise BackendError(f"instance {uuid}: {memory_mib} MiB is outside 1…{maximum} MiB (its maximum)")
        live = dom.isActive()
        with self._errors(f"set memory of instance {uuid} to {memory_mib} MiB{' live' if live else ''}"):
            for flags in self._affect(dom):
                dom.setMemoryFlags(memory_mib * 1024, flags)
            return self._state_of(dom)

    # ------------------------------------------------------------------ devices

    def attach_disk(self, uuid: str, disk: DiskSpec) -> DiskSpec:
        """Attach a disk or CD-ROM (live when running, and in the config); returns it with bus and target set."""
        dom = self._dom(uuid)
        facts = self.describe(uuid)
        with self._errors(f"attach a disk to instance {uuid}"):
            taken = used_targets(dom.XMLDesc(0)) | {d.target for d in facts.spec.disks if d.target}
            resolved = resolve_disk(disk, spec=facts.spec, taken=taken)
            for flags in self._affect(dom):
                dom.attachDeviceFlags(build_disk_xml(resolved), flags)
        return resolved

    def detach_disk(self, uuid: str, target: str) -> bool:
        """Detach the disk at ``target`` (vdb…); live detaching needs the guest's cooperation. False if absent."""
        dom = self._dom(uuid)
        with self._errors(f"detach disk {target} from instance {uuid}"):
            done = False
            if dom.isActive():
                el = find_disk(dom.XMLDesc(0), target)
                if el is not None:
                    dom.detachDeviceFlags(ET.tostring(el, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
                    done = True
            if dom.isPersistent():
                el = find_disk(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
                if el is not None:
                    dom.detachDeviceFlags(ET.tostring(el, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                    done = True
            return done

    def eject_cdrom(self, uuid: str, target: str | None = None) -> list[str]:
        """Empty the CD-ROM at ``target`` (every CD-ROM with media when None), live and in the config.

        Returns the targets that were emptied.
        """
        dom = self._dom(uuid)
        ejected: list[str] = []
        with self._errors(f"eject CD-ROM of instance {uuid}"):
            views = []
            if dom.isActive():
                views.append((0, libvirt.VIR_DOMAIN_AFFECT_LIVE))
            if dom.isPersistent():
                views.append((libvirt.VIR_DOMAIN_XML_INACTIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
            for xml_flags, affect in views:
                xml = dom.XMLDesc(xml_flags)
                facts = parse_domain_xml(xml)
                for disk in facts.spec.disks:
                    if disk.device != "cdrom" or disk.empty or (target is not None and disk.target != target):
                        continue
                    el = find_disk(xml, disk.target or "")
                    dom.updateDeviceFlags(empty_cdrom_xml(el), affect | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE)
                    if disk.target not in ejected:
                        ejected.append(disk.target or "")
        return ejected

    def redefine_boot_from_disk(
        self, uuid: str, *, installer: str | None = None, keep_empty_drive: bool = False
    ) -> InstanceState:
        """Finish an ISO install: remove the installer CD-ROM and boot from the first disk (same UUID).

        Changes the persistent config; a running instance picks it up at its next start.
        """
        xml = self.domain_xml(uuid, inactive=True)
        try:
            new_xml = finish_install_xml(xml, installer=installer, keep_empty_drive=keep_empty_drive)
        except ValueError as exc:
            raise BackendError(f"finish install of instance {uuid}: {exc}") from exc
        with self._errors(f"finish install of instance {uuid}"):
            dom = self.conn.defineXMLFlags(new_xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            return self._state_of(dom)

    # ------------------------------------------------------------------ snapshots

    def snapshot_create(self, uuid: str, name: str, description: str = "") -> SnapshotInfo:
        """Internal qcow2 snapshot (disks, plus memory when running); every writable disk must be qcow2."""
        dom = self._dom(uuid)
        with self._errors(f"snapshot {name!r} of instance {uuid}"):
            snap = dom.snapshotCreateXML(snapshot_xml(name, description), 0)
            return parse_snapshot_xml(snap.getXMLDesc(0), current=True)

    def snapshot_list(self, uuid: str) -> list[SnapshotInfo]:
        dom = self._dom(uuid)
        with self._errors(f"snapshots of instance {uuid}"):
            current = dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else None
            infos = [
                parse_snapshot_xml(s.getXMLDesc(0), current=s.getName() == current) for s in dom.listAllSnapshots(0)
            ]
        return sorted(infos, key=lambda s: (s.created, s.name))

    def snapshot_spec(self, uuid: str, name: str) -> InstanceSpec | None:
        """The domain a revert to snapshot ``name`` brings back (its sizes, devices); None if libvirt kept none."""
        dom = self._dom(uuid)
        with self._errors(f"snapshot {name!r} of instance {uuid}"):
            facts = parse_snapshot_domain(dom.snapshotLookupByName(name, 0).getXMLDesc(0))
        return facts.spec if facts is not None else None

    def snapshot_revert(self, uuid: str, name: str, *, port: str | None = None) -> InstanceState:
        """Go back to a snapshot; the instance ends up in the state the snapshot captured.

        A snapshot brings back the domain definition it was taken with: a guest that ran comes back
        paused until its NICs have their filter again (``filter_nics``), then runs.
        """
        dom = self._dom(uuid)
        with self._errors(f"revert instance {uuid} to snapshot {name!r}"):
            snapshot = dom.snapshotLookupByName(name, 0)
            captured = parse_snapshot_xml(snapshot.getXMLDesc(0)).state
            ran = captured in _RUNNING_SNAPSHOT_STATES
            # (REVERT_PAUSED would also start a snapshot of a shut-off domain, paused.)
            dom.revertToSnapshot(snapshot, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED if ran else 0)
        self.filter_nics(uuid, port=port)
        with self._errors(f"revert instance {uuid} to snapshot {name!r}"):
            if ran and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            return self._state_of(dom)

    def snapshot_delete(self, uuid: str, name: str) -> bool:
        dom = self._dom(uuid)
        try:
            with self._errors(f"delete snapshot {name!r} of instance {uuid}"):
                dom.snapshotLookupByName(name, 0).delete(0)
        except NotFound:
            return False
        return True

    # ------------------------------------------------------------------ console

    def console_target(self, uuid: str) -> ConsoleTarget:
        """Where the VNC server of a running instance listens."""
        facts = self.describe(uuid, inactive=False)
        if not facts.active:
            raise BackendError(f"console of instance {uuid}: the instance is not running")
        if facts.vnc_port is None:
            raise BackendError(f"console of instance {uuid}: no VNC display (port not assigned)")
        return ConsoleTarget(host=self._vnc_host(facts.spec.vnc_listen), port=facts.vnc_port)

    def set_vnc_password(self, uuid: str, password: str, valid_seconds: int | None = None) -> ConsoleTarget:
        """Give the running instance's VNC server a new password (live only), optionally expiring.

        VNC authentication uses at most 8 bytes; longer passwords are refused rather than
        silently truncated (libvirt refuses them too, counting UTF-8 bytes). The config keeps
        its own password (see ``define``) for the next boot. The VNC server must have started
        with a password, which ``define`` sees to.
        """
        if not 1 <= len(password.encode()) <= VNC_PASSWORD_MAX:
            raise ValueError(f"a VNC password has 1 to {VNC_PASSWORD_MAX} bytes (UTF-8)")
        dom = self._dom(uuid)
        target = self.console_target(uuid)
        valid_to = datetime.now(UTC) + timedelta(seconds=valid_seconds) if valid_seconds else None
        with self._errors(f"set the console password of instance {uuid}"):
            xml = graphics_with_password(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE), password, valid_to)
            dom.updateDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        return ConsoleTarget(host=target.host, port=target.port, password=password)

    # ------------------------------------------------------------------ storage

    def find_volume(self, pool: str, name: str) -> VolumeRef | None:
        with self._errors(f"volume {name!r} in pool {pool!r}"):
            return storage.find_volume(self.uri, pool_name=pool, name=name)

    def create_overlay(
        self,
        pool: str,
        name: str,
        backing_volume: str,
        size_bytes: int,
        *,
        backing_pool: str | None = None,
        backing_format: str | None = None,
    ) -> VolumeRef:
        """qcow2 copy-on-write volume on the cached image, with the flavor's size (storage.create_overlay)."""
        with self._errors(f"overlay {name!r} in pool {pool!r}"):
            return storage.create_overlay(
                self.uri,
                pool_name=pool,
                name=name,
                backing_volume=backing_volume,
                size_bytes=size_bytes,
                backing_pool=backing_pool,
                backing_format=backing_format,
            )

    def create_volume(self, pool: str, name: str, size_bytes: int, fmt: str = "qcow2") -> VolumeRef:
        with self._errors(f"volume {name!r} in pool {pool!r}"):
            return storage.create_volume(self.uri, pool_name=pool, name=name, size_bytes=size_bytes, fmt=fmt)

    def upload_bytes(self, pool: str, name: str, data: bytes) -> VolumeRef:
        with self._errors(f"upload of {name!r} to pool {pool!r}"):
            return storage.upload_bytes(self.uri, pool_name=pool, name=name, data=data)

    def upload_file(self, pool: str, name: str, source: Path, progress: ProgressCallback | None = None) -> VolumeRef:
        with self._errors(f"upload of {name!r} to pool {pool!r}"):
            return storage.upload_file(self.uri, pool_name=pool, name=name, source=source, progress=progress)

    def delete_volume(self, pool: str, name: str) -> bool:
        with self._errors(f"delete volume {name!r} in pool {pool!r}"):
            return storage.delete_volume(self.uri, pool_name=pool, name=name)

    def resize_volume(self, pool: str, name: str, size_bytes: int) -> VolumeRef:
        with self._errors(f"resize volume {name!r} in pool {pool!r}"):
            return storage.resize_volume(self.uri, pool_name=pool, name=name, size_bytes=size_bytes)

    def download_file(self, pool: str, name: str, target: Path) -> int:
        with self._errors(f"download of {name!r} from pool {pool!r}"):
            return storage.download_file(self.uri, pool_name=pool, name=name, target=target)

    def refresh_pool(self, pool: str) -> None:
        with self._errors(f"refresh of pool {pool!r}"):
            storage.refresh_pool(self.uri, pool_name=pool)

    def list_volumes(self, pool: str) -> list[VolumeRef]:
        with self._errors(f"volumes of pool {pool!r}"):
            return storage.list_volumes(self.uri, pool_name=pool)


STATS_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


def _summed(values: dict, group: str, field: str) -> int | None:
    """Sum of ``<group>.<i>.<field>`` over ``<group>.count`` entries; None when the group was not reported."""
    count = values.get(f"{group}.count")
    if count is None:
        return None
    return sum(int(values.get(f"{group}.{i}.{field}", 0) or 0) for i in range(int(count)))


def _domain_stats(uuid: str, name: str, values: dict) -> DomainStats:
    """One ``getAllDomainStats`` record as a DomainStats (missing figures stay None)."""

    def number(key: str) -> int | None:
        value = values.get(key)
        return int(value) if value is not None else None

    return DomainStats(
        uuid=uuid,
        name=name,
        state=_POWER.get(values.get("state.state", libvirt.VIR_DOMAIN_NOSTATE), "unknown"),
        vcpus=number("vcpu.current"),
        cpu_time_ns=number("cpu.time"),
        memory_kib=number("balloon.current"),
        memory_available_kib=number("balloon.available"),
        memory_unused_kib=number("balloon.unused"),
        memory_rss_kib=number("balloon.rss"),
        disk_read_bytes=_summed(values, "block", "rd.bytes"),
        disk_write_bytes=_summed(values, "block", "wr.bytes"),
        net_rx_bytes=_summed(values, "net", "rx.bytes"),
        net_tx_bytes=_summed(values, "net", "tx.bytes"),
    )


def random_vnc_password() -> str:
    """8 random characters: all the VNC authentication scheme uses."""
    return secrets.token_urlsafe(6)[:VNC_PASSWORD_MAX]


def _version(number: int) -> str:
    major, rest = divmod(number, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"
