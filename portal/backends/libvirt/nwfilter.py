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

**Security groups** (``group_filter_xml``, ``port_filter_xml``): each group is a filter of
accept rules, one per rule of the group (and one per remote NIC for a remote-group rule). Each
NIC references its own *port filter*, which references the anti-spoofing filter above, lets
DHCP through, references the filters of the instance's groups and drops every other IPv4
packet in both directions. The accept rules are iptables rules, so they are stateful: an
incoming rule also lets the answers out, an outgoing one lets the answers in. Redefining a
group's filter (same UUID) changes it live on every NIC whose port filter references it;
redefining a port filter changes an instance's groups live. Rules run by priority, lowest
first, across the referenced filters: DHCP and the packets of connections already let through
(conntrack's ESTABLISHED and RELATED, both ways) ``PORT_DHCP_PRIORITY``, group rules
``GROUP_RULE_PRIORITY``, the final drop ``PORT_DROP_PRIORITY``. The iptables rules need the
bridge to pass frames to iptables (``net.bridge.bridge-nf-call-iptables = 1``, the
``br_netfilter`` module); ``scripts/bootstrap.sh`` sets it on the portal's own host.

XML is built and parsed with ElementTree only; nothing here imports models.
"""

from __future__ import annotations

import ipaddress
import logging
import xml.etree.ElementTree as ET

import libvirt

from portal.backends.base import BackendError, FirewallRule, NicFilter

log = logging.getLogger(__name__)

GUEST_FILTER = "labcloud-clean-traffic"  # the default name
BASE_FILTER = "clean-traffic"
# Rules go in the root chain; libvirt's chains and rules run by priority, lowest first. This one
# runs before clean-traffic's IPv4 chain (no-ip-spoofing, -710), which would let a guest's own
# address through.
DHCP_SERVER_DROP_PRIORITY = "-720"
PORT_DHCP_PRIORITY = "100"
GROUP_RULE_PRIORITY = "500"
PORT_DROP_PRIORITY = "1000"


def guest_filter_xml(name: str = GUEST_FILTER, uuid: str | None = None) -> str:
    """The portal's filter: ``clean-traffic`` and no DHCP replies (UDP from port 67) out of a guest."""
    root = ET.Element("filter", name=name, chain="root")
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "filterref", filter=BASE_FILTER)
    rule = ET.SubElement(root, "rule", action="drop", direction="out", priority=DHCP_SERVER_DROP_PRIORITY)
    ET.SubElement(rule, "ip", protocol="udp", srcportstart="67")
    return ET.tostring(root, encoding="unicode")


def _remote_attrs(rule: FirewallRule) -> list[dict[str, str]]:
    """The remote side of a rule as match attributes: one set per remote NIC, one for a CIDR, or one empty set."""
    incoming = rule.direction == "in"
    if rule.remote_group:
        if not incoming:
            raise BackendError("a remote-group rule applies to incoming traffic only")
        return [{"srcmacaddr": mac} for mac in rule.remote_macs]
    if rule.remote_cidr:
        net = ipaddress.IPv4Network(rule.remote_cidr, strict=False)
        side = "src" if incoming else "dst"
        if net.prefixlen == 0:
            return [{}]
        return [{f"{side}ipaddr": str(net.network_address), f"{side}ipmask": str(net.prefixlen)}]
    return [{}]


def _protocol_attrs(rule: FirewallRule) -> dict[str, str]:
    if rule.protocol in ("tcp", "udp"):
        attrs = {}
        if rule.port_min is not None:
            attrs["dstportstart"] = str(rule.port_min)
            attrs["dstportend"] = str(rule.port_max if rule.port_max is not None else rule.port_min)
        return attrs
    if rule.protocol == "icmp":
        attrs = {}
        if rule.port_min is not None:
            attrs["type"] = str(rule.port_min)
            if rule.port_max is not None:
                attrs["code"] = str(rule.port_max)
        return attrs
    if rule.protocol == "all":
        return {}
    raise BackendError(f"unknown protocol {rule.protocol!r}")


def group_filter_xml(name: str, rules: tuple[FirewallRule, ...] | list[FirewallRule], uuid: str | None = None) -> str:
    """A security group's filter: an accept rule per rule (per remote NIC for a remote-group rule)."""
    root = ET.Element("filter", name=name, chain="root")
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    for rule in rules:
        if rule.direction not in ("in", "out"):
            raise BackendError(f"unknown direction {rule.direction!r}")
        match = _protocol_attrs(rule)
        for remote in _remote_attrs(rule):
            el = ET.SubElement(root, "rule", action="accept", direction=rule.direction, priority=GROUP_RULE_PRIORITY)
            ET.SubElement(el, rule.protocol, {**remote, **match})
    return ET.tostring(root, encoding="unicode")


def port_filter_xml(name: str, *, base: str, groups: tuple[str, ...] | list[str], uuid: str | None = None) -> str:
    """A NIC's filter: anti-spoofing (``base``), DHCP, the groups' filters, and a drop of everything else."""
    root = ET.Element("filter", name=name, chain="root")
    if uuid:
        ET.SubElement(root, "uuid").text = uuid
    ET.SubElement(root, "filterref", filter=base)
    # DHCP requests and their answers, whatever the groups say (a guest keeps its address).
    rule = ET.SubElement(root, "rule", action="accept", direction="out", priority=PORT_DHCP_PRIORITY)
    ET.SubElement(rule, "udp", srcportstart="68", dstportstart="67")
    rule = ET.SubElement(root, "rule", action="accept", direction="in", priority=PORT_DHCP_PRIORITY)
    ET.SubElement(rule, "udp", srcportstart="67", dstportstart="68")
    # Packets of connections a rule let in (or out) already, both ways: a remote-group rule matches the
    # sender's MAC, which libvirt cannot match on the answers, so the answers pass here (as Neutron's
    # iptables driver lets RELATED,ESTABLISHED through first).
    for direction in ("out", "in"):
        rule = ET.SubElement(root, "rule", action="accept", direction=direction, priority=PORT_DHCP_PRIORITY)
        ET.SubElement(rule, "all", state="ESTABLISHED,RELATED")
    for group in groups:
        ET.SubElement(root, "filterref", filter=group)
    rule = ET.SubElement(root, "rule", action="drop", direction="inout", priority=PORT_DROP_PRIORITY)
    ET.SubElement(rule, "all")
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
                attrs[match.tag] = ""
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


def define_filter(conn: libvirt.virConnect, name: str, build) -> None:
    """Make filter ``name`` be ``build(uuid)`` on the host: defined, or redefined in place (same UUID, so every
    NIC using it changes live) when its rules differ. Raises BackendError when libvirt refuses."""
    for attempt in range(3):
        try:
            existing = _lookup(conn, name)
            if existing is not None and _rules_of(existing.XMLDesc(0)) == _rules_of(build(None)):
                return
            conn.nwfilterDefineXML(build(existing.UUIDString() if existing is not None else None))
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return  # a driver without network filters (test:///): its NICs are not filtered at all
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and attempt < 2:
                continue  # defined at the same moment by another worker (another UUID): again, with its UUID
            raise BackendError(f"cannot define network filter {name!r}: {exc.get_error_message()}") from exc


def remove_filter(conn: libvirt.virConnect, name: str) -> bool:
    """Undefine filter ``name``; False when it is still referenced (by a NIC or another filter) and stays."""
    try:
        existing = _lookup(conn, name)
        if existing is None:
            return True
        existing.undefine()
        return True
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return True  # a driver without network filters (test:///) has none to remove
        if exc.get_error_code() in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED):
            return False
        raise BackendError(f"cannot remove network filter {name!r}: {exc.get_error_message()}") from exc


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


def nic_filter_for(
    conn: libvirt.virConnect, network: str, name: str = GUEST_FILTER, *, port: str | None = None
) -> NicFilter | None:
    """The filter a NIC on libvirt network ``network`` gets, the filter defined on the host first.

    With ``port``, the NIC references that port filter (defined by the caller, see
    ``port_filter_xml``), which references ``name``; the parameters are the same.
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
        return NicFilter(name=port or name, parameters=(("CTRL_IP_LEARNING", "any"),))
    return NicFilter(name=port or name, parameters=(("CTRL_IP_LEARNING", "dhcp"), ("DHCPSERVER", server)))
