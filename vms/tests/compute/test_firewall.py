"""Security groups as libvirt network filters (portal/backends/libvirt/nwfilter.py, vms/compute/libvirt/firewall.py):
the filters' XML, the filters on the real qemu:///system, and two real guests on an isolated network where
guest B reaches a port on guest A only while a rule of A's groups allows it.

The guests are the tiny test guest: busybox ``httpd`` serves a marker on guest A, busybox ``nc`` in
guest B asks for it. Every change goes through the services, whose on-commit sync runs in-process
(``run_tasks``): when the call returns the filters are changed, so the next connection shows it.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from portal.backends.base import BackendError, FirewallRule, InstanceSpec
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.network import NetworkSpec, ensure_network
from portal.backends.libvirt.nwfilter import (
    GROUP_RULE_PRIORITY,
    PORT_DHCP_PRIORITY,
    PORT_DROP_PRIORITY,
    group_filter_xml,
    port_filter_xml,
)
from portal.factories import make_instance
from vms import lifecycle
from vms.compute.libvirt.spec import group_filter_name, port_filter_name
from vms.models import DEFAULT_GROUP, Flavor, Instance, Operation, SecurityGroup
from vms.security_groups import (
    add_rule,
    create_security_group,
    delete_rule,
    set_instance_security_groups,
    sync_firewall,
)
from vms.tests.compute.test_libvirt_guests import BOOTED, wait_for_marker
from vms.tests.conftest import QEMU_URI, active_image
from vms.tests.guest_shell import GuestShell


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 - our own output


# ---------------------------------------------------------------- XML, no libvirt


def test_a_group_filter_has_one_accept_rule_per_rule_and_remote_nic():
    rules = (
        FirewallRule(direction="in", protocol="tcp", port_min=8080, port_max=8090, remote_cidr="10.1.2.3/24"),
        FirewallRule(direction="out", protocol="all"),
        FirewallRule(
            direction="in", protocol="all", remote_group=True, remote_macs=("52:54:00:00:00:01", "52:54:00:00:00:02")
        ),
        FirewallRule(direction="in", protocol="udp", remote_group=True),  # an empty group: nothing
        FirewallRule(direction="in", protocol="icmp", port_min=8, port_max=0),
        FirewallRule(direction="out", protocol="udp", port_min=53, remote_cidr="10.9.0.0/16"),
        FirewallRule(direction="in", protocol="tcp", port_min=22, remote_cidr="0.0.0.0/0"),
    )
    root = parse(group_filter_xml("lctest-sg-x", rules))
    found = [(r.get("action"), r.get("direction"), r.get("priority"), r[0].tag, dict(r[0].attrib)) for r in root]
    assert found == [
        ("accept", "in", GROUP_RULE_PRIORITY, "tcp",
         {"srcipaddr": "10.1.2.0", "srcipmask": "24", "dstportstart": "8080", "dstportend": "8090"}),
        ("accept", "out", GROUP_RULE_PRIORITY, "all", {}),
        ("accept", "in", GROUP_RULE_PRIORITY, "all", {"srcmacaddr": "52:54:00:00:00:01"}),
        ("accept", "in", GROUP_RULE_PRIORITY, "all", {"srcmacaddr": "52:54:00:00:00:02"}),
        ("accept", "in", GROUP_RULE_PRIORITY, "icmp", {"type": "8", "code": "0"}),
        ("accept", "out", GROUP_RULE_PRIORITY, "udp",
         {"dstipaddr": "10.9.0.0", "dstipmask": "16", "dstportstart": "53", "dstportend": "53"}),
        ("accept", "in", GROUP_RULE_PRIORITY, "tcp", {"dstportstart": "22", "dstportend": "22"}),
    ]  # fmt: skip
    with pytest.raises(BackendError):
        group_filter_xml("x", (FirewallRule(direction="out", remote_group=True),))
    with pytest.raises(BackendError):
        group_filter_xml("x", (FirewallRule(direction="in", protocol="gre"),))


def test_a_port_filter_is_anti_spoofing_dhcp_groups_then_drop():
    root = parse(port_filter_xml("lctest-port-x", base="lctest-clean-traffic", groups=["lctest-sg-a", "lctest-sg-b"]))
    assert [c.get("filter") for c in root.findall("filterref")] == [
        "lctest-clean-traffic",
        "lctest-sg-a",
        "lctest-sg-b",
    ]
    rules = root.findall("rule")
    assert [(r.get("action"), r.get("direction"), r.get("priority")) for r in rules] == [
        ("accept", "out", PORT_DHCP_PRIORITY),  # DHCP
        ("accept", "in", PORT_DHCP_PRIORITY),
        ("accept", "out", PORT_DHCP_PRIORITY),  # what a rule let through already, both ways
        ("accept", "in", PORT_DHCP_PRIORITY),
        ("drop", "inout", PORT_DROP_PRIORITY),
    ]
    assert [r[0].get("state") for r in rules[2:4]] == ["ESTABLISHED,RELATED"] * 2
    assert int(PORT_DHCP_PRIORITY) < int(GROUP_RULE_PRIORITY) < int(PORT_DROP_PRIORITY)
    assert rules[-1][0].tag == "all"


# ---------------------------------------------------------------- the real qemu:///system


def test_group_and_port_filters_on_the_host_change_in_place(lctest_host):
    driver = lctest_host.driver
    conn = connect(QEMU_URI)
    group, port = lctest_host.name("sg-a"), lctest_host.name("port-a")
    driver.define_group_filter(group, [FirewallRule(direction="in", protocol="tcp", port_min=22)])
    first = conn.nwfilterLookupByName(group).UUIDString()
    assert driver.define_port_filter(port, [group])
    assert [r.get("filter") for r in parse(conn.nwfilterLookupByName(port).XMLDesc(0)).findall("filterref")] == [
        driver.nic_filter_name,
        group,
    ]
    driver.define_group_filter(group, [FirewallRule(direction="in", protocol="tcp", port_min=80)])
    changed = parse(conn.nwfilterLookupByName(group).XMLDesc(0))
    assert conn.nwfilterLookupByName(group).UUIDString() == first  # redefined, not replaced: live on every NIC
    assert changed.find("rule/tcp").get("dstportstart") == "80"
    assert driver.filter_names(lctest_host.prefix) == sorted([group, port, driver.nic_filter_name])
    assert driver.remove_filter(port) and driver.remove_filter(group)
    assert driver.remove_filter(group)  # already gone is fine
    assert driver.filter_names(lctest_host.prefix) == [driver.nic_filter_name]


# ---------------------------------------------------------------- real guests


def ok(operation: Operation) -> Operation:
    operation.refresh_from_db()
    assert operation.state == Operation.State.SUCCEEDED, f"{operation.kind}: {operation.error}"
    return operation


DHCP_SCRIPT = r'[ "$1" = bound ] && ip addr add $ip/$mask dev $interface; exit 0'
PORT = 8080


def lease(shell: GuestShell) -> str:
    """Bring eth0 up with an address from the network's DHCP server (through the port filter); the address."""
    shell.ready()
    assert shell.run("ip link set eth0 up")[0] == 0
    assert shell.run(f"printf '%s\\n' '{DHCP_SCRIPT}' >/tmp/dhcp.sh && chmod +x /tmp/dhcp.sh")[0] == 0
    status, output = shell.run("udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /tmp/dhcp.sh")
    assert status == 0, output
    leased = re.search(r"lease of (\d+\.\d+\.\d+\.\d+) obtained", output)
    assert leased, output
    return leased.group(1)


@pytest.mark.libvirt_guests
@pytest.mark.django_db
def test_guest_b_reaches_a_port_of_guest_a_only_while_a_rule_allows_it(
    portal_host, guest_media, make_tenant, make_user, run_tasks, lctest_network
):
    tenant = make_tenant("firewall")
    user = make_user("member-firewall")
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * 1024**2)
    flavor = Flavor.objects.create(name="lctest.fw", vcpus=1, ram_mib=128, disk_gib=1)
    default = SecurityGroup.objects.get(tenant=tenant, name=DEFAULT_GROUP)
    web = create_security_group(actor=user, tenant=tenant, name="web")  # all egress, no ingress

    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="fw-{n}", count=2, flavor=flavor, image=image, network=lctest_network
        )
    )
    for operation in launch.operations:
        ok(operation)
    a, b = (Instance.objects.get(pk=i.pk) for i in launch.instances)
    assert list(a.security_groups.all()) == [default] and a.mac_address and b.mac_address
    conn = connect(QEMU_URI)
    a_groups = parse(conn.nwfilterLookupByName(port_filter_name(str(a.uuid))).XMLDesc(0)).findall("filterref")
    assert [f.get("filter") for f in a_groups][1:] == [group_filter_name(str(default.uuid))]
    for instance in (a, b):
        wait_for_marker(portal_host.lctest.work / f"{instance.domain_name}.serial.log", BOOTED)

    with GuestShell(QEMU_URI, str(a.uuid)) as guest_a, GuestShell(QEMU_URI, str(b.uuid)) as guest_b:
        address = lease(guest_a)
        assert ipaddress.ip_address(address) in ipaddress.ip_network(lctest_network.cidr)
        lease(guest_b)
        marker = f"LCFW{uuidlib.uuid4().hex[:8]}"
        command = f"mkdir -p /www && echo {marker}-served >/www/m && httpd -p {PORT} -h /www"
        assert guest_a.run(command)[0] == 0

        def b_reaches_a() -> bool:
            return f"{marker}-served" in fetch(guest_b, address)

        # Both in "default": ingress from the same group (the remote group's NICs, by MAC).
        assert b_reaches_a()
        # A only in "web" (no ingress rule): cut, live.
        run_tasks(lambda: set_instance_security_groups(actor=user, instance=a, groups=[web]))
        assert not b_reaches_a()
        # A rule for the port, from B's group: through, live.
        rule = run_tasks(
            lambda: add_rule(
                actor=user, group=web, direction="ingress", protocol="tcp", port_min=PORT, remote_group=default
            )
        )
        assert b_reaches_a()
        # A rule for another port lets nothing through on this one.
        run_tasks(lambda: delete_rule(actor=user, rule=rule))
        other = run_tasks(
            lambda: add_rule(actor=user, group=web, direction="ingress", protocol="tcp", port_min=PORT + 1)
        )
        assert not b_reaches_a()
        # From B's network by CIDR: through; the rule removed: cut again.
        by_cidr = run_tasks(
            lambda: add_rule(
                actor=user,
                group=web,
                direction="ingress",
                protocol="tcp",
                port_min=PORT,
                remote_cidr=lctest_network.cidr,
            )
        )
        assert b_reaches_a()
        run_tasks(lambda: delete_rule(actor=user, rule=by_cidr))
        assert not b_reaches_a()
        # A still reaches out (web's egress rule): the network's gateway answers its ping.
        gateway = next(ipaddress.ip_network(lctest_network.cidr).hosts())
        status, output = guest_a.run(f"ping -c 1 -W 5 {gateway}")
        assert status == 0, output
        # B is in "default" only, whose ingress is from its own members: A, no longer one, is cut off.
        assert "timed out" in fetch(guest_a, lease_of(guest_b))
        assert other.port_min == PORT + 1

    for instance in (a, b):
        ok(run_tasks(lambda i=instance: lifecycle.delete_instance(actor=user, instance=i)))
    names = portal_host.lctest.driver.filter_names(portal_host.lctest.prefix)
    assert not [n for n in names if "-port-" in n], names  # each instance's port filter went with it


def fetch(shell: GuestShell, address: str) -> str:
    """GET /m from busybox httpd on ``address`` with busybox nc (its wget crashes in the tiny guest); what came.

    A dropped connection attempt ends with nc's "timed out" after 3 s.
    """
    _status, output = shell.run(f"printf 'GET /m HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {address} {PORT}")
    return output


def lease_of(shell: GuestShell) -> str:
    status, output = shell.run("ip -4 addr show eth0")
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", output)
    assert status == 0 and found, output
    return found.group(1)


@pytest.mark.django_db
def test_a_sync_points_a_running_domain_made_before_groups_at_its_port_filter(portal_host, lctest_network, make_tenant):
    """A domain whose NIC has only the anti-spoofing filter (defined before security groups): the tenant's sync
    gives its running NIC and its config the port filter of the instance's groups."""
    driver = portal_host.lctest.driver
    name = lctest_network.libvirt_name
    ensure_network(QEMU_URI, NetworkSpec(name=name, mode="isolated", cidr=lctest_network.cidr))
    tenant = make_tenant("older")
    instance = make_instance(tenant, host=portal_host, mac_address="52:54:00:12:34:56")
    instance.security_groups.set([SecurityGroup.objects.get(tenant=tenant, name=DEFAULT_GROUP)])
    uuid = str(instance.uuid)
    portal_host.lctest.track(uuid)
    old = driver.nic_filter(name)
    driver.define(
        InstanceSpec(uuid=uuid, name=portal_host.lctest.name("old"), memory_mib=64, virt_type="qemu", network=name,
                     mac_address=instance.mac_address, nic_filter=old)
    )  # fmt: skip
    driver.start(uuid, paused=True)  # QEMU runs with the NIC's tap on the bridge; nothing boots
    assert sync_firewall(tenant=tenant) == 1
    port = port_filter_name(uuid)
    assert driver.describe(uuid, inactive=False).spec.nic_filter.name == port
    assert driver.describe(uuid).spec.nic_filter.name == port
    assert driver.describe(uuid).spec.nic_filter.parameters == old.parameters
    assert driver.undefine(uuid) is True


@pytest.mark.django_db
def test_the_sync_command_brings_every_tenant_in_line(portal_host, lctest_network, make_tenant):
    """``manage.py sync_security_groups`` (after an upgrade): the instances' port filters are defined on their host."""
    from io import StringIO

    from django.core.management import call_command

    tenant = make_tenant("upgraded")
    instance = make_instance(tenant, host=portal_host, mac_address="52:54:00:12:34:57")
    instance.security_groups.set([SecurityGroup.objects.get(tenant=tenant, name=DEFAULT_GROUP)])
    out = StringIO()
    call_command("sync_security_groups", "--tenant", tenant.slug, stdout=out)
    assert f"{tenant.slug}: 1 host(s)" in out.getvalue()
    assert port_filter_name(str(instance.uuid)) in portal_host.lctest.driver.filter_names(portal_host.lctest.prefix)
