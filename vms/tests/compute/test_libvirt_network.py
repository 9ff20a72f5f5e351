"""portal.backends.libvirt.network: XML for the three modes, idempotent ensure on test:///default, and one
real isolated network (no <forward>, DNS off) on qemu:///system named lctest-…, always removed."""

from __future__ import annotations

import contextlib
import secrets
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from portal.backends.base import BackendError
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.network import (
    NetworkSpec,
    bridge_name_for,
    delete_network,
    ensure_network,
    network_exists,
    network_mode,
    network_xml,
)
from vms.tests.conftest import PREFIX, QEMU_URI, TEST_URI


def parse(spec: NetworkSpec) -> ET.Element:
    return ET.fromstring(network_xml(spec))  # noqa: S314 - our own output


# ---------------------------------------------------------------- XML


def test_isolated_xml_has_no_forward_and_no_dns():
    root = parse(NetworkSpec(name="lctest-iso", mode="isolated", cidr="10.254.7.0/24"))
    assert root.tag == "network"
    assert root.findtext("name") == "lctest-iso"
    assert root.find("forward") is None
    assert root.find("dns").get("enable") == "no"
    bridge = root.find("bridge").get("name")
    assert bridge == bridge_name_for("lctest-iso") and len(bridge) <= 15
    ip = root.find("ip")
    assert (ip.get("address"), ip.get("netmask")) == ("10.254.7.1", "255.255.255.0")
    dhcp_range = ip.find("dhcp/range")
    assert (dhcp_range.get("start"), dhcp_range.get("end")) == ("10.254.7.2", "10.254.7.254")


def test_isolated_without_subnet_or_dhcp():
    root = parse(NetworkSpec(name="lctest-l2", mode="isolated"))
    assert root.find("ip") is None and root.find("forward") is None
    root = parse(NetworkSpec(name="lctest-nodhcp", mode="isolated", cidr="10.254.8.0/29", dhcp=False))
    assert root.find("ip").get("netmask") == "255.255.255.248"
    assert root.find("ip/dhcp") is None


def test_nat_xml():
    root = parse(NetworkSpec(name="lab-nat", mode="nat", cidr="192.168.150.0/29"))
    assert root.find("forward").get("mode") == "nat"
    assert root.find("dns") is None  # dnsmasq answers DNS on a NAT network
    assert root.find("bridge").get("name") == bridge_name_for("lab-nat")
    dhcp_range = root.find("ip/dhcp/range")
    assert (dhcp_range.get("start"), dhcp_range.get("end")) == ("192.168.150.2", "192.168.150.6")
    assert network_mode(network_xml(NetworkSpec(name="lab-nat", mode="nat", cidr="192.168.150.0/24"))) == "nat"


def test_bridge_xml():
    root = parse(NetworkSpec(name="lab-br", mode="bridge", bridge="br0"))
    assert root.find("forward").get("mode") == "bridge"
    assert root.find("bridge").get("name") == "br0"
    assert root.find("ip") is None and root.find("dns") is None


def test_bridge_names_are_short_stable_and_distinct():
    assert len(bridge_name_for("a-very-long-network-name-with-many-words")) <= 15
    assert bridge_name_for("net1") == bridge_name_for("net1")
    assert bridge_name_for("net1") != bridge_name_for("net2")
    assert bridge_name_for("...").startswith("lc-")


def test_names_with_markup_stay_text():
    # Only names matching [A-Za-z0-9_.-] are accepted at all; the XML is ElementTree-built regardless.
    with pytest.raises(ValueError):
        NetworkSpec(name="x'/><forward mode='nat", mode="isolated")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "", "mode": "isolated"},
        {"name": "a" * 51, "mode": "isolated"},
        {"name": "n", "mode": "route"},
        {"name": "n", "mode": "nat"},  # NAT needs a subnet
        {"name": "n", "mode": "bridge"},  # bridge needs a bridge
        {"name": "n", "mode": "bridge", "bridge": "br0", "cidr": "10.0.0.0/24"},
        {"name": "n", "mode": "isolated", "bridge": "br0"},
        {"name": "n", "mode": "isolated", "cidr": "10.0.0.1/24"},  # host bits
        {"name": "n", "mode": "isolated", "cidr": "10.0.0.0/8"},
        {"name": "n", "mode": "isolated", "cidr": "10.0.0.0/30"},
        {"name": "n", "mode": "isolated", "cidr": "fd00::/64"},
        {"name": "n", "mode": "bridge", "bridge": "a-bridge-name-too-long"},
    ],
)
def test_invalid_specs(kwargs):
    with pytest.raises(ValueError):
        NetworkSpec(**kwargs)


# ---------------------------------------------------------------- test:///default


@pytest.fixture
def test_networks():
    """Names of lctest- networks made on test:///default; removed afterwards whatever happened."""
    made: list[str] = []
    yield made
    conn = connect(TEST_URI)
    for net in conn.listAllNetworks(0):
        if net.name().startswith(PREFIX):
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec(name="lctest-unit-iso", mode="isolated", cidr="10.254.9.0/24"),
        NetworkSpec(name="lctest-unit-nat", mode="nat", cidr="192.168.151.0/24"),
        NetworkSpec(name="lctest-unit-br", mode="bridge", bridge="br0"),
    ],
    ids=lambda spec: spec.mode,
)
def test_ensure_is_idempotent_on_the_test_driver(test_networks, spec):
    assert not network_exists(TEST_URI, spec.name)
    assert ensure_network(TEST_URI, spec) == spec.name
    assert ensure_network(TEST_URI, spec) == spec.name  # again: nothing to do
    net = connect(TEST_URI).networkLookupByName(spec.name)
    assert net.isActive() and net.isPersistent() and net.autostart()
    assert network_mode(net.XMLDesc(0)) == spec.mode
    # stopped behind our back: ensure starts it again
    net.destroy()
    assert ensure_network(TEST_URI, spec) == spec.name
    assert connect(TEST_URI).networkLookupByName(spec.name).isActive()
    assert delete_network(TEST_URI, spec.name) is True
    assert not network_exists(TEST_URI, spec.name)
    assert delete_network(TEST_URI, spec.name) is False


def test_ensure_refuses_an_existing_network_of_another_mode(test_networks):
    ensure_network(TEST_URI, NetworkSpec(name="lctest-unit-mode", mode="isolated"))
    with pytest.raises(BackendError, match="mode"):
        ensure_network(TEST_URI, NetworkSpec(name="lctest-unit-mode", mode="nat", cidr="192.168.152.0/24"))
    assert network_mode(connect(TEST_URI).networkLookupByName("lctest-unit-mode").XMLDesc(0)) == "isolated"


def _libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, 0, message, 0, "", None, None, 0, 0)
    return error


class RefusingConnection:
    """A connection on which no network exists and libvirt refuses every definition."""

    def networkLookupByName(self, name):
        raise _libvirt_error(libvirt.VIR_ERR_NO_NETWORK, f"Network not found: {name}")

    def networkDefineXML(self, xml):
        raise _libvirt_error(libvirt.VIR_ERR_OPERATION_FAILED, "bridge name virbr0 already in use")


def test_libvirt_refusals_become_backend_errors(monkeypatch):
    from portal.backends.libvirt import network as module

    monkeypatch.setattr(module, "connect", lambda uri: RefusingConnection())
    with pytest.raises(BackendError, match="already in use"):
        ensure_network("qemu:///fake", NetworkSpec(name="lctest-refused", mode="isolated"))
    assert network_exists("qemu:///fake", "lctest-refused") is False
    assert delete_network("qemu:///fake", "lctest-refused") is False


class UnstartableNetwork:
    undefined = False

    def XMLDesc(self, flags):
        return "<network><name>lctest-unstartable</name></network>"

    def isActive(self):
        return False

    def create(self):
        raise _libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "Failed to apply firewall rules")

    def undefine(self):
        self.undefined = True


class DefiningConnection(RefusingConnection):
    def __init__(self):
        self.net = UnstartableNetwork()

    def networkDefineXML(self, xml):
        return self.net


def test_a_network_that_cannot_start_is_not_left_defined(monkeypatch):
    from portal.backends.libvirt import network as module

    conn = DefiningConnection()
    monkeypatch.setattr(module, "connect", lambda uri: conn)
    with pytest.raises(BackendError, match="firewall"):
        ensure_network("qemu:///fake", NetworkSpec(name="lctest-unstartable", mode="isolated"))
    assert conn.net.undefined


# ---------------------------------------------------------------- the real host: one isolated network


@pytest.fixture
def real_network_name():
    name = f"{PREFIX}net-{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        conn = connect(QEMU_URI)
        with contextlib.suppress(libvirt.libvirtError):
            net = conn.networkLookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()
        assert name not in [n.name() for n in conn.listAllNetworks(0)]


def _free_subnet(conn: libvirt.virConnect) -> str:
    """A 10.254.x.0/24 that no network on the host uses yet."""
    used = set()
    for net in conn.listAllNetworks(0):
        with contextlib.suppress(libvirt.libvirtError):
            for ip in ET.fromstring(net.XMLDesc(0)).iter("ip"):  # noqa: S314 - libvirt's output
                used.add(ip.get("address", ""))
    for third in range(100, 250):
        if f"10.254.{third}.1" not in used:
            return f"10.254.{third}.0/24"
    pytest.skip("no free 10.254.x.0/24 subnet on this host")


def test_real_isolated_network_on_qemu_system(real_network_name):
    if not Path("/usr/sbin/iptables").exists():
        pytest.fail("libvirt's network driver needs iptables, even for isolated networks: apt-get install iptables")
    conn = connect(QEMU_URI)
    spec = NetworkSpec(name=real_network_name, mode="isolated", cidr=_free_subnet(conn))
    root = parse(spec)
    assert root.find("forward") is None and root.find("dns").get("enable") == "no"  # no traffic leaves

    # libvirt's network driver needs iptables even here (scripts/bootstrap.sh installs it before libvirtd
    # starts; libvirt 9 remembers a failed firewall set-up until the daemon restarts).
    ensure_network(QEMU_URI, spec)
    net = conn.networkLookupByName(real_network_name)
    assert net.isActive() and net.isPersistent() and net.autostart()
    live = ET.fromstring(net.XMLDesc(0))  # noqa: S314 - libvirt's output
    assert live.find("forward") is None
    assert live.find("dns").get("enable") == "no"
    assert live.find("bridge").get("name") == bridge_name_for(real_network_name)

    assert ensure_network(QEMU_URI, spec) == real_network_name  # idempotent on the real host too
    assert network_exists(QEMU_URI, real_network_name)
    assert delete_network(QEMU_URI, real_network_name) is True
    assert not network_exists(QEMU_URI, real_network_name)
