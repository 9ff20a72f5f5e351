"""libvirt virtual networks: build their XML, create them on a host on first use, remove them.

Three modes, as an admin defines them in the portal:

- ``isolated``: a bridge of its own with no ``<forward>`` (guests reach each other and the host's
  address on it, nothing else) and ``<dns enable='no'/>``; with a subnet, the host takes its
  first address and dnsmasq hands out the rest by DHCP (DNS stays off).
- ``nat``: ``<forward mode='nat'/>`` on a bridge of its own, with the subnet's first address on the
  host and DHCP for the rest (libvirt sets up dnsmasq and the masquerading rules). Needs a subnet.
- ``bridge``: ``<forward mode='bridge'/>`` onto an existing host bridge (``br0``…), which must
  already exist on every host; addressing is the physical network's business.

The bridge of an isolated or NAT network is named from the network name (``lc`` + up to six of
its letters/digits + ``-`` + six hex digits of its hash: at most 15 characters, the Linux limit),
so the same network gets the same bridge on every host and never collides with ``virbrN``.

XML is built with ElementTree only. Nothing here imports models: services turn a ``Network`` row
into a ``NetworkSpec``. libvirt errors become ``BackendError`` (``HostUnreachable`` when the host
cannot be reached).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from portal.backends.base import BackendError
from portal.backends.libvirt.connection import connect

MODES = ("isolated", "nat", "bridge")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,50}")
BRIDGE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
MIN_PREFIX, MAX_PREFIX = 16, 29


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class NetworkSpec:
    """What a portal network looks like on a host. Invalid combinations raise ValueError."""

    name: str
    mode: str
    bridge: str | None = None
    cidr: str | None = None
    dhcp: bool = True

    def __post_init__(self) -> None:
        _check(bool(NAME_RE.fullmatch(self.name or "")), f"invalid libvirt network name {self.name!r}")
        _check(self.mode in MODES, f"unknown network mode {self.mode!r}")
        if self.mode == "bridge":
            _check(bool(BRIDGE_RE.fullmatch(self.bridge or "")), f"invalid bridge name {self.bridge!r}")
            _check(not self.cidr, "a bridged network takes its addresses from the physical network (no subnet)")
        else:
            _check(not self.bridge, f"a {self.mode} network has a bridge of its own (no bridge name)")
        if self.mode == "nat":
            _check(bool(self.cidr), "a NAT network needs a subnet")
        if self.cidr:
            subnet = parse_subnet(self.cidr)
            _check(str(subnet) == self.cidr, f"write the subnet as {subnet}")

    @property
    def subnet(self) -> ipaddress.IPv4Network | None:
        return parse_subnet(self.cidr) if self.cidr else None


def parse_subnet(cidr: str) -> ipaddress.IPv4Network:
    """An IPv4 network with a prefix of /16 to /29 and no host bits set, else ValueError."""
    try:
        subnet = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ValueError(f"{cidr!r} is not a network address such as 192.168.150.0/24") from exc
    _check(subnet.version == 4, "only IPv4 subnets are supported")
    _check(
        MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX,
        f"the prefix must be between /{MIN_PREFIX} and /{MAX_PREFIX}",
    )
    return subnet


def bridge_name_for(name: str) -> str:
    """The bridge of an isolated or NAT network: stable per name, at most 15 characters."""
    letters = re.sub(r"[^a-z0-9]", "", name.lower())[:6]
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"lc{letters}-{digest}"


def network_xml(spec: NetworkSpec) -> str:
    net = ET.Element("network")
    ET.SubElement(net, "name").text = spec.name
    if spec.mode == "bridge":
        ET.SubElement(net, "forward", mode="bridge")
        ET.SubElement(net, "bridge", name=spec.bridge or "")
        return ET.tostring(net, encoding="unicode")
    if spec.mode == "nat":
        ET.SubElement(net, "forward", mode="nat")
    ET.SubElement(net, "bridge", name=bridge_name_for(spec.name), stp="on", delay="0")
    if spec.mode == "isolated":
        ET.SubElement(net, "dns", enable="no")
    subnet = spec.subnet
    if subnet is not None:
        hosts = subnet.hosts()
        gateway = next(hosts)
        ip = ET.SubElement(net, "ip", address=str(gateway), netmask=str(subnet.netmask))
        if spec.dhcp:
            first = next(hosts)
            last = subnet.broadcast_address - 1
            dhcp = ET.SubElement(ip, "dhcp")
            ET.SubElement(dhcp, "range", start=str(first), end=str(last))
    return ET.tostring(net, encoding="unicode")


def network_mode(xml: str) -> str:
    """The mode of a network's XML: isolated, nat, bridge, or libvirt's own forward mode (route, open…)."""
    forward = ET.fromstring(xml).find("forward")  # noqa: S314 - libvirt's own output; no external entities
    if forward is None:
        return "isolated"
    return forward.get("mode", "nat")


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virNetwork | None:
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise BackendError(f"cannot look up network {name!r}: {exc.get_error_message()}") from exc


def network_exists(uri: str, name: str) -> bool:
    return _lookup(connect(uri), name) is not None


def ensure_network(uri: str, spec: NetworkSpec) -> str:
    """Make network ``spec.name`` exist, run and autostart on the host; returns its libvirt name.

    Idempotent: a network already there is left as it is (only started and marked autostart), as
    long as its mode is the one asked for; a different mode raises BackendError rather than
    touching a network someone else defined.
    """
    conn = connect(uri)
    net = _lookup(conn, spec.name)
    defined_here = False
    if net is None:
        try:
            net = conn.networkDefineXML(network_xml(spec))
            defined_here = True
        except libvirt.libvirtError as exc:
            net = _lookup(conn, spec.name)  # defined at the same time by another worker?
            if net is None:
                raise BackendError(f"cannot define network {spec.name!r}: {exc.get_error_message()}") from exc
    try:
        mode = network_mode(net.XMLDesc(0))
        if mode != spec.mode:
            raise BackendError(f"network {spec.name!r} already exists on the host in mode {mode!r}, not {spec.mode!r}")
        if not net.isActive():
            net.create()
        if net.isPersistent() and not net.autostart():
            net.setAutostart(1)
    except libvirt.libvirtError as exc:
        if defined_here:  # leave nothing half-made behind: the next attempt defines it again
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()
        raise BackendError(f"cannot start network {spec.name!r}: {exc.get_error_message()}") from exc
    return spec.name


def delete_network(uri: str, name: str) -> bool:
    """Stop and undefine network ``name``; False when it was not there."""
    conn = connect(uri)
    net = _lookup(conn, name)
    if net is None:
        return False
    try:
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return True  # removed at the same time by someone else
        raise BackendError(f"cannot delete network {name!r}: {exc.get_error_message()}") from exc
    return True
