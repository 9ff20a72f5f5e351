"""Domain XML: build it from an ``InstanceSpec``, read it back, and edit it (finish install, devices).

Only ``xml.etree.ElementTree`` touches XML here: names, titles, descriptions and metadata holding
``<``, ``&``, quotes or any Unicode text round-trip unchanged (XML itself turns ``\r\n`` into
``\n``; control characters XML cannot carry are refused with ValueError). Nothing here talks to
libvirt.

Layout of a built domain (``<domain type='kvm'|'qemu'>``):

- ``<title>``/``<description>`` as given; ``<metadata>`` holds ``<labcloud:instance>`` with the OS
  type, the CPU mode asked for and the resolved device models as attributes, and one
  ``<labcloud:meta key='…'>value</…>`` per ``InstanceSpec.metadata`` entry (keys are attributes,
  so any string is a valid key).
- ``<memory>`` is the maximum, ``<currentMemory>`` the balloon target; ``<vcpu current='n'>max``.
- Boot order per device (``<boot order='N'/>`` in disks), never ``<os><boot dev=…>``: an ISO
  install boots the CD-ROM first, and ``finish_install_xml`` removes it and boots the disk.
- The NIC (when ``network`` is set) references ``nic_filter`` (``<filterref>`` with its
  ``<parameter>``s), the portal's anti-spoofing filter (``nwfilter.py``).
- Serial port 0 is a pty (``virDomainOpenConsole``, the web serial console) that libvirt also logs
  to ``serial_log`` when given (``<log file=…>``, written by virtlogd); ``<console>`` points at it.
- VNC on ``vnc_listen`` with an automatic port, a USB tablet (absolute pointer for noVNC), VGA.
- ``<features><acpi/><apic/></features>`` (ACPI power button for ``shutdown``), a virtio memory
  balloon (unless ``memballoon=False``) reporting guest memory statistics every 10 s, a virtio RNG for linux guests.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from portal.backends.base import DiskSpec, InstanceSpec, NicFilter, SnapshotInfo

NS = "https://labcloud.invalid/xmlns/instance/1"
ET.register_namespace("labcloud", NS)

MIB = 1024 * 1024
_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": MIB,
    "mib": MIB,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd", "ide": "hd"}
# Characters XML 1.0 cannot carry at all (libvirt would reject the document).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class DomainFacts:
    """A parsed domain: its spec plus what only a live domain has (VNC port, domain id)."""

    spec: InstanceSpec
    vnc_port: int | None = None
    domain_id: int | None = None

    @property
    def active(self) -> bool:
        return self.domain_id is not None


# ------------------------------------------------------------------ helpers

BALLOON_STATS_PERIOD = 10  # seconds between the guest's memory reports (libvirt <stats period>)


def _text(value: str, what: str) -> str:
    if _XML_INVALID.search(value):
        raise ValueError(f"{what} contains characters XML cannot carry (control characters)")
    return value


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 - libvirt's own output or ours; expat expands no external entities


def _bytes(el: ET.Element | None) -> int | None:
    if el is None or not (el.text or "").strip():
        return None
    unit = (el.get("unit") or "KiB").lower()
    return int(el.text.strip()) * _UNITS.get(unit, 1024)


def device_name(prefix: str, index: int) -> str:
    """libvirt's disk naming: vda … vdz, vdaa …"""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def next_target(bus: str, taken: set[str]) -> str:
    prefix = _BUS_PREFIX.get(bus, "sd")
    index = 0
    while device_name(prefix, index) in taken:
        index += 1
    return device_name(prefix, index)


# ------------------------------------------------------------------ resolve defaults


def default_disk_bus(os_type: str) -> str:
    return "sata" if os_type == "windows" else "virtio"


def default_nic_model(os_type: str) -> str:
    return "e1000" if os_type == "windows" else "virtio"


def cdrom_bus(machine: str) -> str:
    """IDE on i440fx ('pc…'); q35 has no IDE controller, so SATA there."""
    return "sata" if "q35" in machine else "ide"


def resolve_disk(disk: DiskSpec, *, spec: InstanceSpec, taken: set[str]) -> DiskSpec:
    """Fill in bus, target, format and readonly the way the builder will write them."""
    cdrom = disk.device == "cdrom"
    bus = disk.bus or (cdrom_bus(spec.machine) if cdrom else (spec.disk_bus or default_disk_bus(spec.os_type)))
    target = disk.target or next_target(bus, taken)
    taken.add(target)
    return dataclasses.replace(
        disk,
        bus=bus,
        target=target,
        format=disk.format or ("raw" if cdrom else "qcow2"),
        readonly=disk.readonly or cdrom,  # libvirt always reports CD-ROMs read-only
    )


def resolve(spec: InstanceSpec) -> InstanceSpec:
    """The spec with every default made explicit: what ``parse_domain_xml(build_domain_xml(spec))`` returns."""
    taken = {d.target for d in spec.disks if d.target}
    disks = tuple(resolve_disk(d, spec=spec, taken=taken) for d in spec.disks)
    return dataclasses.replace(
        spec,
        max_vcpus=spec.effective_max_vcpus,
        max_memory_mib=spec.effective_max_memory_mib,
        disk_bus=spec.disk_bus or default_disk_bus(spec.os_type),
        nic_model=spec.nic_model or default_nic_model(spec.os_type),
        disks=disks,
    )


# ------------------------------------------------------------------ build


def disk_element(disk: DiskSpec) -> ET.Element:
    """``<disk>`` for a resolved DiskSpec (bus and target set)."""
    if not disk.bus or not disk.target:
        raise ValueError("disk_element needs a resolved disk (bus and target)")
    kind = "volume" if disk.volume is not None else "file"
    el = ET.Element("disk", type=kind, device=disk.device)
    _sub(el, "driver", name="qemu", type=disk.format or ("raw" if disk.device == "cdrom" else "qcow2"))
    if disk.volume is not None:
        _sub(el, "source", pool=_text(disk.pool or "", "pool"), volume=_text(disk.volume, "volume"))
    elif disk.path is not None:
        _sub(el, "source", file=_text(disk.path, "disk path"))
    _sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly or disk.device == "cdrom":
        _sub(el, "readonly")
    if disk.boot_order is not None:
        _sub(el, "boot", order=str(disk.boot_order))
    return el


def disk_xml(disk: DiskSpec) -> str:
    return ET.tostring(disk_element(disk), encoding="unicode")


def build_domain_element(spec: InstanceSpec) -> ET.Element:
    spec = resolve(spec)
    dom = ET.Element("domain", type=spec.virt_type)
    _sub(dom, "name", _text(spec.name, "name"))
    _sub(dom, "uuid", spec.uuid)
    if spec.title:
        _sub(dom, "title", _text(spec.title, "title"))
    if spec.description:
        _sub(dom, "description", _text(spec.description, "description"))
    ours = ET.SubElement(
        _sub(dom, "metadata"),
        f"{{{NS}}}instance",
        {
            "os-type": spec.os_type,
            "cpu-mode": spec.cpu_mode,
            "disk-bus": spec.disk_bus or "",
            "nic-model": spec.nic_model or "",
        },
    )
    for key, value in spec.metadata.items():
        ET.SubElement(ours, f"{{{NS}}}meta", key=_text(key, "metadata key")).text = _text(value, "metadata value")

    _sub(dom, "memory", str(spec.effective_max_memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.effective_max_vcpus), placement="static", current=str(spec.vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=spec.arch, machine=spec.machine)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.cpu_mode in ("host-model", "host-passthrough"):
        _sub(dom, "cpu", mode=spec.cpu_mode)
    elif spec.cpu_mode == "custom":
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", _text(spec.cpu_model or "", "cpu model"), fallback="allow")
    _sub(dom, "clock", offset="localtime" if spec.os_type == "windows" else "utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    for disk in spec.disks:
        devices.append(disk_element(disk))
    if spec.network is not None:
        nic = _sub(devices, "interface", type="network")
        if spec.mac_address:
            _sub(nic, "mac", address=spec.mac_address)
        _sub(nic, "source", network=_text(spec.network, "network"))
        _sub(nic, "model", type=spec.nic_model or default_nic_model(spec.os_type))
        if spec.nic_filter is not None:
            add_filterref(nic, spec.nic_filter)
    serial = _sub(devices, "serial", type="pty")
    if spec.serial_log:
        _sub(serial, "log", file=_text(spec.serial_log, "serial log path"), append="off")
    _sub(serial, "target", port="0")
    _sub(_sub(devices, "console", type="pty"), "target", type="serial", port="0")
    _sub(devices, "input", type="tablet", bus="usb")
    graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=spec.vnc_listen)
    if spec.vnc_password:
        graphics.set("passwd", _text(spec.vnc_password, "VNC password"))
    _sub(graphics, "listen", type="address", address=spec.vnc_listen)
    _sub(_sub(devices, "video"), "model", type="vga")
    if spec.os_type == "linux":
        _sub(_sub(devices, "rng", model="virtio"), "backend", "/dev/urandom", model="random")
    balloon = _sub(devices, "memballoon", model="virtio" if spec.memballoon else "none")
    if spec.memballoon:
        # The guest's balloon driver reports its memory use every BALLOON_STATS_PERIOD seconds (metrics).
        _sub(balloon, "stats", period=str(BALLOON_STATS_PERIOD))
    return dom


def build_domain_xml(spec: InstanceSpec) -> str:
    return ET.tostring(build_domain_element(spec), encoding="unicode")


# ------------------------------------------------------------------ parse


def _parse_disk(el: ET.Element) -> DiskSpec | None:
    device = el.get("device", "disk")
    if device not in ("disk", "cdrom"):
        return None
    source = el.find("source")
    path = pool = volume = None
    kind = el.get("type", "file")
    if source is not None:
        if kind == "volume":
            pool, volume = source.get("pool"), source.get("volume")
        elif kind == "file":
            path = source.get("file")
        elif kind == "block":
            path = source.get("dev")
        else:
            return None  # network/nvme/vhostuser disks are not ours
    if device == "disk" and path is None and volume is None:
        return None
    target = el.find("target")
    driver = el.find("driver")
    boot = el.find("boot")
    return DiskSpec(
        device=device,
        path=path,
        pool=pool,
        volume=volume,
        format=driver.get("type") if driver is not None else None,
        bus=target.get("bus") if target is not None else None,
        target=target.get("dev") if target is not None else None,
        readonly=el.find("readonly") is not None,
        boot_order=int(boot.get("order")) if boot is not None and boot.get("order") else None,
    )


def parse_domain_xml(xml: str) -> DomainFacts:
    """Read a domain's XML (ours or libvirt's rendering of it) back into a spec and live facts."""
    dom = _parse(xml)
    ours = dom.find(f"metadata/{{{NS}}}instance")
    metadata: dict[str, str] = {}
    os_type, disk_bus, nic_model, our_cpu_mode = "linux", None, None, None
    if ours is not None:
        os_type = ours.get("os-type") or "linux"
        our_cpu_mode = ours.get("cpu-mode") or None
        disk_bus = ours.get("disk-bus") or None
        nic_model = ours.get("nic-model") or None
        for item in ours.findall(f"{{{NS}}}meta"):
            metadata[item.get("key", "")] = item.text or ""

    max_memory = _bytes(dom.find("memory")) or 0
    current_memory = _bytes(dom.find("currentMemory")) or max_memory
    vcpu = dom.find("vcpu")
    max_vcpus = int((vcpu.text or "1").strip()) if vcpu is not None else 1
    vcpus = int(vcpu.get("current", max_vcpus)) if vcpu is not None else 1

    cpu = dom.find("cpu")
    cpu_mode, cpu_model = "default", None
    if cpu is not None and cpu.get("mode") in ("host-model", "host-passthrough"):
        cpu_mode = cpu.get("mode")
    elif cpu is not None and cpu.findtext("model"):
        cpu_mode, cpu_model = "custom", cpu.findtext("model")
    if our_cpu_mode in ("default", "host-model", "host-passthrough"):
        # What we asked for: libvirt writes its default model (e.g. qemu64 under TCG) into the
        # config, and a running host-model domain shows the expanded custom model.
        cpu_mode, cpu_model = our_cpu_mode, None

    os_type_el = dom.find("os/type")
    devices = dom.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    disks = tuple(d for d in (_parse_disk(el) for el in devices.findall("disk")) if d is not None)

    network = mac = nic_filter = None
    for nic in devices.findall("interface"):
        if nic.get("type") == "network" and nic.find("source") is not None:
            network = nic.find("source").get("network")
            mac = nic.find("mac").get("address") if nic.find("mac") is not None else None
            model = nic.find("model")
            if model is not None and nic_model is None:
                nic_model = model.get("type")
            nic_filter = nic_filter_of(nic)
            break

    serial_log = None
    serial = devices.find("serial")
    if serial is not None and serial.find("log") is not None:
        serial_log = serial.find("log").get("file")

    vnc_listen, vnc_port, vnc_password = "127.0.0.1", None, None
    graphics = devices.find("graphics[@type='vnc']")
    if graphics is not None:
        listen = graphics.find("listen[@type='address']")
        vnc_listen = (listen.get("address") if listen is not None else None) or graphics.get("listen") or vnc_listen
        port = int(graphics.get("port", "-1"))
        vnc_port = port if port > 0 else None
        vnc_password = graphics.get("passwd")

    balloon = devices.find("memballoon")
    virt_type = dom.get("type", "kvm")
    spec = InstanceSpec(
        uuid=dom.findtext("uuid", "").strip(),
        name=dom.findtext("name", ""),
        title=dom.findtext("title", ""),
        description=dom.findtext("description", ""),
        vcpus=vcpus,
        max_vcpus=max_vcpus,
        memory_mib=current_memory // MIB,
        max_memory_mib=max_memory // MIB,
        virt_type=virt_type if virt_type in ("kvm", "qemu") else "qemu",
        cpu_mode=cpu_mode,
        cpu_model=cpu_model,
        os_type=os_type,
        machine=os_type_el.get("machine", "pc") if os_type_el is not None else "pc",
        arch=os_type_el.get("arch", "x86_64") if os_type_el is not None else "x86_64",
        disk_bus=disk_bus,
        nic_model=nic_model,
        disks=disks,
        network=network,
        mac_address=mac,
        nic_filter=nic_filter,
        vnc_listen=vnc_listen,
        vnc_password=vnc_password,
        serial_log=serial_log,
        memballoon=balloon is None or balloon.get("model") != "none",
        metadata=metadata,
    )
    domain_id = dom.get("id")
    active_id = int(domain_id) if domain_id not in (None, "-1") else None
    return DomainFacts(spec=spec, vnc_port=vnc_port, domain_id=active_id)


# ------------------------------------------------------------------ edits


def _disk_source(el: ET.Element) -> str | None:
    source = el.find("source")
    if source is None:
        return None
    return source.get("file") or source.get("volume") or source.get("dev")


def finish_install_xml(xml: str, *, installer: str | None = None, keep_empty_drive: bool = False) -> str:
    """The domain after an ISO install: installer CD-ROM gone, boots from the first disk.

    ``installer`` (a path or volume name) picks the CD-ROM to remove; ``None`` removes every
    CD-ROM with media. ``keep_empty_drive`` empties the drive instead of removing it (Windows
    guests like to keep the drive letter for a later driver ISO). Every other boot entry is
    dropped and the first ``device='disk'`` gets ``<boot order='1'/>``. The UUID, name and all
    other settings stay, so defining the result updates the same domain.
    """
    dom = _parse(xml)
    dom.attrib.pop("id", None)
    os_el = dom.find("os")
    if os_el is not None:
        for boot in os_el.findall("boot"):
            os_el.remove(boot)
    devices = dom.find("devices")
    if devices is None:
        raise ValueError("domain XML has no devices")
    for cdrom in devices.findall("disk[@device='cdrom']"):
        source = _disk_source(cdrom)
        if source is None or (installer is not None and source != installer):
            continue
        if keep_empty_drive:
            cdrom.remove(cdrom.find("source"))
            if cdrom.get("type") == "volume":
                cdrom.set("type", "file")
        else:
            devices.remove(cdrom)
    for device in devices:
        for boot in device.findall("boot"):
            device.remove(boot)
    first_disk = devices.find("disk[@device='disk']")
    if first_disk is None:
        raise ValueError("domain has no disk to boot from")
    boot = ET.Element("boot", order="1")
    # <boot> goes after <target> and friends; libvirt accepts it anywhere inside <disk>.
    first_disk.append(boot)
    return ET.tostring(dom, encoding="unicode")


def add_filterref(nic: ET.Element, nic_filter: NicFilter) -> None:
    ref = _sub(nic, "filterref", filter=_text(nic_filter.name, "NIC filter"))
    for name, value in nic_filter.parameters:
        _sub(ref, "parameter", name=_text(name, "filter parameter"), value=_text(value, "filter parameter"))


def nic_filter_of(nic: ET.Element) -> NicFilter | None:
    """The ``<filterref>`` of an ``<interface>`` element, if it has one."""
    ref = nic.find("filterref")
    if ref is None or not ref.get("filter"):
        return None
    return NicFilter(
        name=ref.get("filter"),
        parameters=tuple((p.get("name", ""), p.get("value", "")) for p in ref.findall("parameter")),
    )


def nics_to_filter(xml: str, wanted: Callable[[str], NicFilter | None]) -> list[str]:
    """Each NIC on a libvirt network whose filter is not ``wanted(network)``, as ``<interface>`` XML with it.

    For ``virDomainUpdateDeviceFlags`` (matched by MAC). Empty when nothing changes: every such NIC
    already has its filter, or ``wanted`` answers ``None`` (the host cannot filter; a filter already
    there stays).
    """
    edited: list[str] = []
    for nic in _parse(xml).findall("devices/interface[@type='network']"):
        source = nic.find("source")
        network = source.get("network") if source is not None else None
        nic_filter = wanted(network) if network else None
        if nic_filter is None or nic_filter_of(nic) == nic_filter:
            continue
        for old in nic.findall("filterref"):
            nic.remove(old)
        add_filterref(nic, nic_filter)
        nic.tail = None
        edited.append(ET.tostring(nic, encoding="unicode"))
    return edited


def empty_cdrom_xml(disk_el: ET.Element) -> str:
    """The ``<disk device='cdrom'>`` element without media, for ``updateDeviceFlags`` (eject)."""
    el = ET.Element("disk", type="file", device="cdrom")
    for tag in ("driver", "target", "readonly", "address", "alias"):
        child = disk_el.find(tag)
        if child is not None:
            el.append(child)
    return ET.tostring(el, encoding="unicode")


def find_disk(xml: str, target: str) -> ET.Element | None:
    """The ``<disk>`` element whose target is ``target`` (vda, hdc…), or None."""
    for disk in _parse(xml).findall("devices/disk"):
        el = disk.find("target")
        if el is not None and el.get("dev") == target:
            return disk
    return None


def used_targets(xml: str) -> set[str]:
    return {t.get("dev", "") for t in _parse(xml).findall("devices/disk/target")}


def graphics_with_password(xml: str, password: str, valid_to: datetime | None) -> str:
    """The domain's VNC ``<graphics>`` element with a new password (and expiry), for ``updateDeviceFlags``."""
    graphics = _parse(xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise ValueError("domain has no VNC display")
    graphics.set("passwd", _text(password, "VNC password"))
    if valid_to is not None:
        graphics.set("passwdValidTo", valid_to.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    else:
        graphics.attrib.pop("passwdValidTo", None)
    return ET.tostring(graphics, encoding="unicode")


# ------------------------------------------------------------------ snapshots


def snapshot_xml(name: str, description: str = "") -> str:
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", _text(name, "snapshot name"))
    if description:
        _sub(snap, "description", _text(description, "snapshot description"))
    return ET.tostring(snap, encoding="unicode")


def parse_snapshot_domain(xml: str) -> DomainFacts | None:
    """The domain a snapshot brings back on revert (the ``<domain>`` inside its XML); None when it has none."""
    domain = _parse(xml).find("domain")
    return parse_domain_xml(ET.tostring(domain, encoding="unicode")) if domain is not None else None


def parse_snapshot_xml(xml: str, *, current: bool = False) -> SnapshotInfo:
    snap = _parse(xml)
    created = snap.findtext("creationTime")
    return SnapshotInfo(
        name=snap.findtext("name", ""),
        description=snap.findtext("description", ""),
        created=int(created) if created and created.strip().isdigit() else 0,
        state=snap.findtext("state", ""),
        parent=snap.findtext("parent/name"),
        current=current,
    )
