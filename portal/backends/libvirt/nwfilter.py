"""Anti-spoofing on guest NICs: the portal's network filter, built on libvirt's ``clean-traffic``.

Every NIC the portal defines references the portal's filter (``<filterref>`` in the domain XML, see
``domain.py``), named ``<domain prefix>clean-traffic``: ``labcloud-clean-traffic`` by default, and one
of their own for the tests, which remove it with the rest of what carries their prefix.

The filter is libvirt's ``clean-traffic`` (no MAC, IP or ARP spoofing, no other L2 protocol than
IPv4 and ARP, which also means no IPv6: portal networks are IPv4 only) plus one rule
``clean-traffic`` lacks: **no DHCP server in a guest**. ``clean-traffic`` lets a guest send anything
from its own address, so a guest running a DHCP server (UDP source port 67) could answer its
neighbours' DISCOVERs before the network's dnsmasq and hand them a gateway of its choosing; the rule
drops those packets at the guest's port, before the bridge.

How a guest's address is learned (libvirt's ``CTRL_IP_LEARNING``):

- on a network whose DHCP libvirt runs (``<ip><dhcp>`` in the network's XML), ``dhcp`` with
  ``DHCPSERVER`` = that network's address: the filter accepts only the address the network's own
  DHCP server leased to this MAC. A guest that sets another address by hand sends nothing.
- elsewhere (no DHCP, or a host bridge whose addresses come from the physical network), ``any``:
  the first address the guest uses is the one it keeps.

The filter is defined on a host the first time a NIC needs it and redefined (same UUID, so
running guests pick the change up) when this module's rules change. libvirt's own filters come
from Debian's ``libvirt-daemon-config-nwfilter`` package (``scripts/bootstrap.sh`` installs it and
loads them into a running daemon); a host without ``clean-traffic`` refuses NICs with a clear
error rather than running unfiltered.

A connection driver without network filters at all (libvirt's ``test:///`` driver) gets NICs
without a filter: ``nic_filter_for`` answers ``None`` (with a warning). A QEMU host always has
the nwfilter driver; a daemon that cannot reach it fails with an error instead.

XML is built and parsed with ElementTree only; nothing here imports models.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import libvirt

from portal.backends.base import BackendError, NicFilter

log = logging.getLogger(__name__)

GUEST_FILTER = "labcloud-clean-traffic"  # the default name
BASE_FILTER = "clean-traffic"
# Rules go in the root chain; libvirt's chains and rules run by priority, lowest first. This one
# runs before clean-traffic's IPv4 chain (no-ip-spoofing, -710), which would let a guest's own
# address through.
DHCP_SERVER_DROP_PRIORITY = "-720"


def guest_filter_xml(name: str = GUEST_FILTER, uuid: str | None = None) -> str:
    """The portal's filter: ``clean-traffic`` and no DHCP replies (UDP from port 67) out of a guest."""
    root = ET.Element("filter", name=name, chain="root")
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "filterref", filter=BASE_FILTER)
    rule = ET.SubElement(root, "rule", action="drop", direction="out", priority=DHCP_SERVER_DROP_PRIORITY)
    ET.SubElement(rule, "ip", protocol="udp", srcportstart="67")
    return ET.tostring(root, encoding="unicode")


def _rules_of(xml: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """A filter's references and rules, comparable (libvirt adds its own UUID and default attributes)."""
    root = ET.fromstring(xml)  # noqa: S314 - our own or libvirt's output; no external entities
    found: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for child in root:
        if child.tag == "filterref":
            found.append(("filterref", (("filter", child.get("filter", "")),)))
        elif child.tag == "rule":
            attrs = {k: v for k, v in child.attrib.items() if k in ("action", "direction", "priority")}
            for match in child:
                attrs.update({f"{match.tag}.{k}": v for k, v in match.attrib.items()})
            found.append(("rule", tuple(sorted(attrs.items()))))
    return found


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virNWFilter | None:
    try:
        return conn.nwfilterLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
            return None
        raise


def ensure_guest_filter(conn: libvirt.virConnect, name: str = GUEST_FILTER) -> bool:
    """Make the portal's filter ``name`` exist on the host as this module builds it.

    Returns False when the connection driver has no network filters at all (``test:///``).
    Raises BackendError when libvirt's ``clean-traffic`` is missing (the filter would reference
    nothing) or the filter cannot be defined.
    """
    try:
        if _lookup(conn, BASE_FILTER) is None:
            raise BackendError(
                f"the host has no libvirt network filter {BASE_FILTER!r} (package libvirt-daemon-config-nwfilter): "
                "its guests' NICs cannot be protected against spoofing"
            )
        existing = _lookup(conn, name)
        if existing is not None and _rules_of(existing.XMLDesc(0)) == _rules_of(guest_filter_xml(name)):
            return True
        conn.nwfilterDefineXML(guest_filter_xml(name, existing.UUIDString() if existing is not None else None))
        return True
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return False
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and _lookup(conn, name) is not None:
            return True  # defined at the same moment by another worker
        raise BackendError(f"cannot define network filter {name!r}: {exc.get_error_message()}") from exc


def dhcp_server_of(network_xml: str) -> str | None:
    """The address of the DHCP server libvirt runs on a network (its ``<ip>`` with ``<dhcp>``), if any."""
    root = ET.fromstring(network_xml)  # noqa: S314 - libvirt's own output
    for ip in root.findall("ip"):
        if ip.find("dhcp") is not None and ip.get("family", "ipv4") == "ipv4" and ip.get("address"):
            return ip.get("address")
    return None


def nic_filter_for(conn: libvirt.virConnect, network: str, name: str = GUEST_FILTER) -> NicFilter | None:
    """The filter a NIC on libvirt network ``network`` gets, the filter defined on the host first.

    ``None`` only for a connection driver without network filters (see the module's docstring).
    """
    if not ensure_guest_filter(conn, name):
        log.warning("%s has no network filter driver: NICs on %r run without anti-spoofing", conn.getURI(), network)
        return None
    try:
        server = dhcp_server_of(conn.networkLookupByName(network).XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise BackendError(f"cannot read network {network!r}: {exc.get_error_message()}") from exc
    if server is None:
        return NicFilter(name=name, parameters=(("CTRL_IP_LEARNING", "any"),))
    return NicFilter(name=name, parameters=(("CTRL_IP_LEARNING", "dhcp"), ("DHCPSERVER", server)))
