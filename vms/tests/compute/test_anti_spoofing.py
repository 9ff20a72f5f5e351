"""Anti-spoofing on guest NICs (portal/backends/libvirt/nwfilter.py): the filter's XML, the filter on the
real qemu:///system, the NICs the portal defines, and a real guest that tries to spoof and to serve DHCP.

The guest test is the attacker's view: a member's guest on a network shared with other tenants
sends from an address its DHCP server did not give it, from a MAC that is not its own, and runs a
DHCP server (busybox udhcpd) that answers a DISCOVER on the network. What leaves the guest is
captured on the network's bridge (an AF_PACKET socket on the host): the legitimate traffic sent
after each attempt is seen there (the capture works and is past the attempt: frames of one port
arrive in order), the forged traffic never is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
import re
import socket
import struct
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import pytest

from portal.backends.base import DiskSpec, InstanceSpec, NicFilter
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.domain import build_domain_xml, nics_to_filter, parse_domain_xml
from portal.backends.libvirt.driver import LibvirtDriver
from portal.backends.libvirt.network import NetworkSpec, delete_network, ensure_network, network_xml
from portal.backends.libvirt.nwfilter import GUEST_FILTER, dhcp_server_of, ensure_guest_filter, guest_filter_xml
from vms import lifecycle
from vms.compute.libvirt.spec import nic_filter_name, port_filter_name
from vms.models import Flavor, Instance, Operation
from vms.tests.compute.test_libvirt_guests import BOOTED, wait_for_marker
from vms.tests.conftest import QEMU_URI, TEST_URI, active_image, leftovers
from vms.tests.guest_shell import GuestShell


def learning_dhcp(server: str, name: str = GUEST_FILTER) -> NicFilter:
    return NicFilter(name=name, parameters=(("CTRL_IP_LEARNING", "dhcp"), ("DHCPSERVER", server)))


# ---------------------------------------------------------------- XML, no libvirt


def test_the_filter_is_clean_traffic_and_no_dhcp_server():
    root = ET.fromstring(guest_filter_xml())  # noqa: S314 - our own output
    assert (root.get("name"), root.get("chain")) == (GUEST_FILTER, "root")
    assert root.find("uuid") is None
    assert [ref.get("filter") for ref in root.findall("filterref")] == ["clean-traffic"]
    (rule,) = root.findall("rule")
    assert (rule.get("action"), rule.get("direction")) == ("drop", "out")
    # Before clean-traffic's IPv4 chain (no-ip-spoofing, priority -710), which lets a guest's own address by.
    assert int(rule.get("priority")) < -710
    match = rule.find("ip")
    assert (match.get("protocol"), match.get("srcportstart")) == ("udp", "67")
    assert ET.fromstring(guest_filter_xml(GUEST_FILTER, "0b5e7c8a-6d3f-4c1e-9a7b-1f2e3d4c5b6a")).findtext("uuid")  # noqa: S314


def test_the_dhcp_server_of_a_network_is_its_address_with_dhcp():
    with_dhcp = NetworkSpec(name="lctest-a", mode="isolated", cidr="10.254.7.0/24")
    assert dhcp_server_of(network_xml(with_dhcp)) == "10.254.7.1"
    assert (
        dhcp_server_of(network_xml(NetworkSpec(name="lctest-b", mode="isolated", cidr="10.254.8.0/24", dhcp=False)))
        is None
    )
    assert dhcp_server_of(network_xml(NetworkSpec(name="lctest-c", mode="bridge", bridge="br0"))) is None
    assert dhcp_server_of(network_xml(NetworkSpec(name="lctest-d", mode="isolated"))) is None


def test_a_nic_filter_round_trips_through_the_domain_xml():
    nic_filter = learning_dhcp("10.254.7.1")
    spec = InstanceSpec(uuid=str(uuidlib.uuid4()), name="lctest-x", network="lctest-net", nic_filter=nic_filter)
    nic = ET.fromstring(build_domain_xml(spec)).find("devices/interface")  # noqa: S314
    ref = nic.find("filterref")
    assert ref.get("filter") == GUEST_FILTER
    assert [(p.get("name"), p.get("value")) for p in ref.findall("parameter")] == list(nic_filter.parameters)
    assert parse_domain_xml(build_domain_xml(spec)).spec.nic_filter == nic_filter
    unfiltered = InstanceSpec(uuid=spec.uuid, name=spec.name, network="lctest-net")
    assert parse_domain_xml(build_domain_xml(unfiltered)).spec.nic_filter is None
    assert "filterref" not in build_domain_xml(InstanceSpec(uuid=spec.uuid, name=spec.name))  # no NIC at all


def test_nics_to_filter_edits_only_what_differs():
    spec = InstanceSpec(uuid=str(uuidlib.uuid4()), name="lctest-x", network="net-a", mac_address="52:54:00:00:00:01")
    asked: list[str] = []

    def wanted(network: str) -> NicFilter | None:
        asked.append(network)
        return learning_dhcp("10.254.7.1")

    (nic,) = nics_to_filter(build_domain_xml(spec), wanted)
    assert asked == ["net-a"]
    element = ET.fromstring(nic)  # noqa: S314
    assert element.tag == "interface" and element.find("mac").get("address") == "52:54:00:00:00:01"
    assert element.find("filterref").get("filter") == GUEST_FILTER
    filtered = dataclasses.replace(spec, nic_filter=learning_dhcp("10.254.7.1"))
    assert nics_to_filter(build_domain_xml(filtered), wanted) == []  # already right
    (changed,) = nics_to_filter(build_domain_xml(filtered), lambda _net: learning_dhcp("10.254.9.1"))
    assert len(ET.fromstring(changed).findall("filterref")) == 1  # noqa: S314 - replaced, not added
    assert nics_to_filter(build_domain_xml(spec), lambda _net: None) == []  # the host cannot filter


# ---------------------------------------------------------------- the real host, nothing booted


def test_a_driver_without_network_filters_gives_none():
    """libvirt's test:/// driver has no nwfilter driver: its NICs stay unfiltered (a QEMU host always has one)."""
    assert ensure_guest_filter(connect(TEST_URI)) is False
    assert LibvirtDriver(TEST_URI).nic_filter("default") is None


def test_the_hosts_filter_is_defined_once_and_put_back_when_changed(lctest_host):
    conn = connect(QEMU_URI)
    name = lctest_host.driver.nic_filter_name  # the test's own, removed with its lctest_host
    assert ensure_guest_filter(conn, name) is True
    uuid = conn.nwfilterLookupByName(name).UUIDString()
    assert ensure_guest_filter(conn, name) is True
    assert conn.nwfilterLookupByName(name).UUIDString() == uuid
    # Someone (or an older portal) left it without the DHCP rule: put back, same UUID (running guests follow).
    weakened = ET.fromstring(guest_filter_xml(name, uuid))  # noqa: S314
    weakened.remove(weakened.find("rule"))
    try:
        conn.nwfilterDefineXML(ET.tostring(weakened, encoding="unicode"))
        assert conn.nwfilterLookupByName(name).XMLDesc(0).count("<rule") == 0
    finally:
        assert ensure_guest_filter(conn, name) is True
    restored = conn.nwfilterLookupByName(name)
    assert restored.UUIDString() == uuid
    assert 'srcportstart="67"' in restored.XMLDesc(0).replace("'", '"')


@pytest.fixture
def no_dhcp_network(lctest_host):
    name = lctest_host.name("nodhcp")
    ensure_network(QEMU_URI, NetworkSpec(name=name, mode="isolated"))
    try:
        yield name
    finally:
        delete_network(QEMU_URI, name)


@pytest.mark.django_db
def test_a_nic_learns_its_address_from_the_networks_own_dhcp_server(lctest_host, lctest_network, no_dhcp_network):
    ensure_network(QEMU_URI, NetworkSpec(name=lctest_network.libvirt_name, mode="isolated", cidr=lctest_network.cidr))
    gateway = str(next(ipaddress.ip_network(lctest_network.cidr).hosts()))
    assert lctest_host.driver.nic_filter(lctest_network.libvirt_name) == learning_dhcp(
        gateway, lctest_host.driver.nic_filter_name
    )
    assert lctest_host.driver.nic_filter(no_dhcp_network) == NicFilter(
        name=lctest_host.driver.nic_filter_name, parameters=(("CTRL_IP_LEARNING", "any"),)
    )


@pytest.mark.django_db
def test_filter_nics_fills_in_a_domain_defined_without_live_and_in_its_config(lctest_host, lctest_network):
    """A domain defined before the portal filtered NICs: its config and, while it runs, its live NIC get the filter."""
    driver = lctest_host.driver
    name = lctest_network.libvirt_name
    ensure_network(QEMU_URI, NetworkSpec(name=name, mode="isolated", cidr=lctest_network.cidr))
    gateway = str(next(ipaddress.ip_network(lctest_network.cidr).hosts()))
    uuid = lctest_host.track(str(uuidlib.uuid4()))
    driver.define(InstanceSpec(uuid=uuid, name=lctest_host.name("old"), memory_mib=64, virt_type="qemu", network=name))
    assert driver.describe(uuid).spec.nic_filter is None
    driver.start(uuid, paused=True)  # QEMU runs with the NIC's tap on the bridge; nothing boots
    assert driver.describe(uuid, inactive=False).spec.nic_filter is None

    assert driver.filter_nics(uuid) is True
    assert driver.describe(uuid, inactive=False).spec.nic_filter == learning_dhcp(gateway, driver.nic_filter_name)
    assert driver.describe(uuid).spec.nic_filter == learning_dhcp(gateway, driver.nic_filter_name)
    bindings = [b.portDev() for b in connect(QEMU_URI).listAllNWFilterBindings(0)]
    tap = ET.fromstring(driver.domain_xml(uuid, inactive=False)).find("devices/interface/target").get("dev")  # noqa: S314
    assert tap in bindings  # libvirt instantiated the filter on the guest's port
    assert driver.filter_nics(uuid) is False  # nothing left to do
    assert driver.undefine(uuid) is True


@pytest.mark.django_db
def test_a_snapshot_revert_brings_no_unfiltered_nic_back(lctest_host, lctest_network):
    """A running snapshot taken while the NIC was unfiltered: the reverted guest runs again, filtered."""
    driver = lctest_host.driver
    name = lctest_network.libvirt_name
    ensure_network(QEMU_URI, NetworkSpec(name=name, mode="isolated", cidr=lctest_network.cidr))
    gateway = str(next(ipaddress.ip_network(lctest_network.cidr).hosts()))
    disk = driver.create_volume(lctest_host.pool, lctest_host.name("snap.qcow2"), 16 * 2**20)
    uuid = lctest_host.track(str(uuidlib.uuid4()))
    spec = InstanceSpec(
        uuid=uuid,
        name=lctest_host.name("snap"),
        memory_mib=64,
        virt_type="qemu",
        network=name,
        disks=(DiskSpec(pool=lctest_host.pool, volume=disk.name, boot_order=1),),
    )
    driver.define(spec)
    assert driver.start(uuid).state == "running"  # firmware only: the disk is blank
    assert driver.snapshot_create(uuid, "unfiltered").state == "running"
    assert driver.filter_nics(uuid) is True

    assert driver.snapshot_revert(uuid, "unfiltered").state == "running"
    assert driver.describe(uuid, inactive=False).spec.nic_filter == learning_dhcp(gateway, driver.nic_filter_name)
    assert driver.describe(uuid).spec.nic_filter == learning_dhcp(gateway, driver.nic_filter_name)
    assert driver.snapshot_delete(uuid, "unfiltered") is True
    assert driver.undefine(uuid) is True


# ---------------------------------------------------------------- a real guest tries


@dataclass(frozen=True)
class Frame:
    src_mac: str
    ethertype: int
    ip_src: str | None = None
    ip_dst: str | None = None
    ip_length: int | None = None
    protocol: int | None = None
    sport: int | None = None
    dport: int | None = None
    arp_sender: str | None = None


def parse_frame(data: bytes) -> Frame:
    src_mac = data[6:12].hex(":")
    ethertype = struct.unpack("!H", data[12:14])[0]
    if ethertype == 0x0800 and len(data) >= 34:
        ip = data[14:]
        header = (ip[0] & 0x0F) * 4
        protocol = ip[9]
        sport = dport = None
        if protocol == 17 and len(ip) >= header + 4:
            sport, dport = struct.unpack("!HH", ip[header : header + 4])
        return Frame(
            src_mac=src_mac,
            ethertype=ethertype,
            ip_src=socket.inet_ntoa(ip[12:16]),
            ip_dst=socket.inet_ntoa(ip[16:20]),
            ip_length=struct.unpack("!H", ip[2:4])[0],
            protocol=protocol,
            sport=sport,
            dport=dport,
        )
    if ethertype == 0x0806 and len(data) >= 42:
        return Frame(src_mac=src_mac, ethertype=ethertype, arp_sender=socket.inet_ntoa(data[28:32]))
    return Frame(src_mac=src_mac, ethertype=ethertype)


class BridgeCapture:
    """Every frame the bridge passes on to the host (broadcasts, frames for the host), read on a thread."""

    def __init__(self, bridge: str) -> None:
        self.frames: list[Frame] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self._sock.bind((bridge, 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, name=f"capture-{bridge}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            frame = parse_frame(data)
            with self._changed:
                self.frames.append(frame)
                self._changed.notify_all()

    def wait_for(self, what: Callable[[Frame], bool], timeout: float = 30) -> Frame:
        with self._changed:
            self._changed.wait_for(lambda: any(what(f) for f in self.frames), timeout)
            found = [f for f in self.frames if what(f)]
        assert found, f"no such frame on the bridge within {timeout} s"
        return found[0]

    def seen(self, what: Callable[[Frame], bool]) -> list[Frame]:
        with self._changed:
            return [f for f in self.frames if what(f)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def send_dhcp_discover(bridge: str, client_mac: bytes) -> None:
    """A DHCPDISCOVER broadcast on the bridge, as a client on the shared network would send one (broadcast flag)."""
    packet = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,  # BOOTREQUEST
        1,  # Ethernet
        6,
        0,
        random.getrandbits(32),
        0,
        0x8000,  # please answer by broadcast
        b"\0" * 4,
        b"\0" * 4,
        b"\0" * 4,
        b"\0" * 4,
        client_mac + b"\0" * 10,
        b"",
        b"",
    )
    packet += b"\x63\x82\x53\x63" + bytes([53, 1, 1, 255])  # magic cookie, DHCP message type DISCOVER
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
        sock.bind(("0.0.0.0", 68))  # noqa: S104 - bound to the test network's bridge only
        sock.sendto(packet, ("255.255.255.255", 67))


def ok(operation: Operation) -> Operation:
    assert operation.state == Operation.State.SUCCEEDED, f"{operation.kind}: {operation.error}"
    return operation


DHCP_SCRIPT = r'[ "$1" = bound ] && ip addr add $ip/$mask dev $interface; exit 0'


@pytest.mark.libvirt_guests
@pytest.mark.django_db
def test_a_guest_on_a_shared_network_cannot_spoof_or_serve_dhcp(
    portal_host, guest_media, make_tenant, make_user, run_tasks, lctest_network
):
    tenant = make_tenant("spoof")
    user = make_user("member-spoof")
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.nic", vcpus=1, ram_mib=128, disk_gib=1)
    driver = portal_host.lctest.driver
    conn = connect(QEMU_URI)
    subnet = ipaddress.ip_network(lctest_network.cidr)
    gateway = str(next(subnet.hosts()))

    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="attacker", flavor=flavor, image=image, network=lctest_network
        )
    )
    instance = launch.instances[0]
    ok(Operation.objects.get(pk=launch.operations[0].pk))
    uuid = str(instance.uuid)
    assert nic_filter_name().startswith(portal_host.lctest.prefix)  # the test's own filter, removed after it
    # The NIC references its port filter (its security groups), which references the anti-spoofing filter.
    assert driver.describe(uuid).spec.nic_filter == learning_dhcp(gateway, port_filter_name(uuid))
    port = ET.fromstring(conn.nwfilterLookupByName(port_filter_name(uuid)).XMLDesc(0))  # noqa: S314
    assert port.find("filterref").get("filter") == nic_filter_name()

    # A domain defined before NICs were filtered (an upgrade): starting it through the portal filters it.
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="stop")))
    old = ET.fromstring(driver.domain_xml(uuid))  # noqa: S314
    nic = old.find("devices/interface")
    nic.remove(nic.find("filterref"))
    conn.defineXML(ET.tostring(old, encoding="unicode"))
    assert driver.describe(uuid).spec.nic_filter is None
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="start")))
    assert driver.describe(uuid, inactive=False).spec.nic_filter == learning_dhcp(gateway, port_filter_name(uuid))
    instance.refresh_from_db()
    assert instance.state == Instance.State.RUNNING
    mac = instance.mac_address
    bridge = conn.networkLookupByName(lctest_network.libvirt_name).bridgeName()

    wait_for_marker(portal_host.lctest.work / f"{instance.domain_name}.serial.log", BOOTED)
    capture = BridgeCapture(bridge)
    barriers = iter(range(100, 200))

    def through(shell: GuestShell, source: str) -> None:
        """A legitimate ping, seen on the bridge: every frame the guest sent before it has been seen too."""
        size = next(barriers)
        status, output = shell.run(f"ping -c 1 -W 10 -s {size} {gateway}")
        assert status == 0, output
        capture.wait_for(lambda f: f.ip_src == source and f.protocol == 1 and f.ip_length == 28 + size)

    try:
        with GuestShell(QEMU_URI, uuid) as shell:
            shell.ready()
            assert shell.run("ip link set eth0 up")[0] == 0
            assert shell.run(f"printf '%s\\n' '{DHCP_SCRIPT}' >/tmp/dhcp.sh && chmod +x /tmp/dhcp.sh")[0] == 0
            status, output = shell.run("udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /tmp/dhcp.sh")
            assert status == 0, output
            leased = re.search(r"lease of (\d+\.\d+\.\d+\.\d+) obtained from (\d+\.\d+\.\d+\.\d+)", output)
            assert leased and leased.group(2) == gateway, output
            address = leased.group(1)
            through(shell, address)

            # 1. Another address of the network, set by hand.
            spoofed = next(str(a) for a in reversed(list(subnet.hosts())) if str(a) not in (address, gateway))
            assert shell.run(f"ip addr add {spoofed}/{subnet.prefixlen} dev eth0")[0] == 0
            status, output = shell.run(f"ping -c 1 -W 2 -I {spoofed} {gateway}")
            assert status != 0, output
            assert shell.run(f"ip addr del {spoofed}/{subnet.prefixlen} dev eth0")[0] == 0
            through(shell, address)

            # 2. Another MAC address.
            forged_mac = "52:54:00:de:ad:01" if mac != "52:54:00:de:ad:01" else "52:54:00:de:ad:02"
            assert shell.run(f"ip link set eth0 address {forged_mac}")[0] == 0
            status, output = shell.run(f"ping -c 1 -W 2 {gateway}")
            assert status != 0, output
            assert shell.run(f"ip link set eth0 address {mac}")[0] == 0
            through(shell, address)

            # 3. A DHCP server in the guest, answering a client's DISCOVER on the network.
            pool_start, pool_end = str(subnet.network_address + 200), str(subnet.network_address + 210)
            config = f"start {pool_start}\\nend {pool_end}\\ninterface eth0\\nlease_file /tmp/leases\\n"
            command = f"printf '{config}' >/tmp/udhcpd.conf && : >/tmp/leases && "
            status, output = shell.run(command + "(udhcpd -f /tmp/udhcpd.conf >/tmp/udhcpd.log 2>&1 &)")
            assert status == 0, output
            client = bytes.fromhex("02" + "".join(f"{random.randrange(256):02x}" for _ in range(5)))
            # Until the rogue server has handed out an address: udhcpd records the lease just before it
            # sends the OFFER and writes its lease file on SIGUSR1, which it handles after that send. A
            # DISCOVER that came before udhcpd listened is lost, so each round sends one.
            deadline = time.monotonic() + 60
            while True:
                send_dhcp_discover(bridge, client)
                status, output = shell.run("kill -USR1 $(pidof udhcpd) && dumpleases -f /tmp/leases")
                if client.hex(":") in output.lower():
                    break
                assert time.monotonic() < deadline, f"udhcpd never offered an address:\n{output}\n{shell.tail()}"
            # The network's own DHCP server answered on the bridge too: the capture sees DHCP offers.
            capture.wait_for(lambda f: f.ip_src == gateway and f.sport == 67 and f.dport == 68)
            through(shell, address)
            shell.run("kill $(pidof udhcpd)")
    finally:
        capture.close()

    from_guest = capture.seen(lambda f: f.src_mac == mac)
    assert [f for f in from_guest if f.protocol == 1 and f.ip_src == address]  # the legitimate pings
    assert capture.seen(lambda f: f.src_mac == forged_mac) == []
    assert capture.seen(lambda f: spoofed in (f.ip_src, f.arp_sender)) == []
    assert [f for f in from_guest if f.sport == 67] == []  # no DHCP offer left the guest
    assert {f.ip_src for f in from_guest if f.ip_src} <= {address, "0.0.0.0"}  # noqa: S104 - DHCP client's
    assert {f.arp_sender for f in from_guest if f.arp_sender} <= {address, "0.0.0.0"}  # noqa: S104

    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    with contextlib.suppress(libvirt.libvirtError):
        assert conn.lookupByUUIDString(uuid) is None
    assert [n for n in leftovers(conn, portal_host.lctest.prefix) if "image" not in n] == []
