"""Migration between two real libvirt daemons (qemu:///system and the tests' second host), real TCG guests.

What a user of the guest must not notice, checked from inside it: a ticker the guest prints on its
serial console every 0.2 s only counts forward across each migration (the guest never restarted;
read through the portal's serial console on whichever host it runs), and the blocks written to its disk before a
copy-storage migration read back the same afterwards (checksums computed in the guest).

- copy-storage: live there and back (the base image goes to the destination through the portal's
  image copy first; libvirt mirrors the overlay's own blocks), then cold (shut off: the volumes
  travel through the portal), booting again on the destination with the data intact; the guest has
  a NIC on a bridge both hosts reach (the test's own, no address, no uplink, as a lab's hosts share
  one L2 segment): it keeps its MAC and network, and its tap and anti-spoofing filter follow it;
- shared storage, the second host reached over qemu+tls (its own CA): the second host's pool is the
  same directory as the system host's (both hosts named with one ``storage_share``): nothing is
  copied; there, the job switches to post-copy at its deadline; back, the worker dies once libvirt
  has finished (the rows still name the source) and the recovery sweep's retry finishes the rows;
- a migration cancelled mid-way, one whose destination QEMU dies mid-way and one past its deadline:
  the guest runs on its source, untouched, and the destination keeps nothing of it;
- draining a host with three instances (one running, two shut off): all of them on the other host;
- a batch spread over both hosts, the image copied to the second one once, its guest's consoles,
  metrics and snapshots there, and one watcher following both daemons;
- evacuating the second host after killing its libvirtd (its guest's QEMU keeps running, as on a
  host whose management died): the instance is rebuilt on the system host from its image, and when
  the second daemon answers again the watcher's reconcile destroys the old copy there.

The second daemon shares the machine's network namespace, so a NIC's tap on either host can sit on the
same bridge; isolated or NAT libvirt networks are per host (each has its own bridge and subnet), which
is why the NIC test uses an existing bridge.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

import libvirt
import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from images.models import ImageReplica
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.driver import LibvirtDriver
from portal.backends.libvirt.network import delete_network
from portal.services import ServiceError
from portal.testing_second_host import kill_libvirtd, remove_named, start_libvirtd
from vms import execution, lifecycle, moves, networks
from vms import hosts as host_services
from vms.compute import compute_for
from vms.compute.libvirt import migration as compute_migration
from vms.compute.libvirt.spec import port_filter_name
from vms.models import Flavor, Host, Instance, Network, Operation, PlacementRule, Snapshot
from vms.tests.compute.test_libvirt_guests import BOOTED, wait_for_marker
from vms.tests.conftest import QEMU_URI, active_image, watcher_running
from vms.tests.guest_shell import GuestShell
from vms.watcher.loop import HostWatcher

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.second_host, pytest.mark.django_db]

DATA_MIB = 8  # random blocks written past the image's end, at 256 MiB into the 1 GiB disk
DATA_AT_MIB = 256


def ok(operation: Operation) -> Operation:
    operation.refresh_from_db()
    assert operation.state == Operation.State.SUCCEEDED, (
        f"{operation.kind}: {operation.error} / {operation.error_detail}"
    )
    return operation


@pytest.fixture
def hosts(portal_host, second_host, second_host_row):
    """The system host and the second host as portal rows, migration data on 127.0.0.1; the second host takes
    no launches (the guest starts on the system host). Afterwards nothing of the test is left on either."""
    prefix = second_host_row.name.removesuffix("host2")  # the prefix names the test's domains and volumes
    Host.objects.filter(pk__in=[portal_host.pk, second_host_row.pk]).update(migration_address="127.0.0.1")
    Host.objects.filter(pk=second_host_row.pk).update(enabled=False)
    portal_host.refresh_from_db()  # keeps .lctest
    second_host_row.refresh_from_db()
    try:
        yield portal_host, second_host_row
    finally:
        remove_named(QEMU_URI, prefix)
        remove_named(second_host.tcp_uri, prefix)
        conn = libvirt.open(second_host.tcp_uri)
        try:  # the image copies the portal made there (named after the image, not the test)
            for replica in ImageReplica.objects.filter(host=second_host_row):
                with contextlib.suppress(libvirt.libvirtError):
                    conn.storagePoolLookupByName(replica.pool).storageVolLookupByName(replica.volume).delete(0)
        finally:
            conn.close()


def tenant_with_tiny_image(make_tenant, make_user, guest_media, name: str):
    """A tenant, a member of it, the tiny guest as its image and a 128 MiB flavor, all named after ``name``."""
    tenant = make_tenant(name)
    user = make_user(f"member-{name}")
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * 1024**2)
    flavor = Flavor.objects.create(name=f"lctest.{name}", vcpus=1, ram_mib=128, disk_gib=1)
    return tenant, user, image, flavor


def launch_guest(hosts, guest_media, make_tenant, make_user, run_tasks, network: Network | None = None) -> Instance:
    """A tiny guest launched on the system host (with a NIC on ``network`` if given), booted; then the second
    host takes instances too."""
    system, second = hosts
    tenant, user, image, flavor = tenant_with_tiny_image(make_tenant, make_user, guest_media, "migrate")
    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="mover", flavor=flavor, image=image, network=network
        )
    )
    ok(Operation.objects.get(pk=launch.operations[0].pk))
    instance = Instance.objects.select_related("host").get(pk=launch.instances[0].pk)
    assert instance.host == system
    system.lctest.track(str(instance.uuid))
    Host.objects.filter(pk=second.pk).update(enabled=True)
    second.refresh_from_db()
    wait_for_marker(system.lctest.work / f"{instance.domain_name}.serial.log", BOOTED)
    return instance


@pytest.fixture
def guest(hosts, guest_media, make_tenant, make_user, run_tasks):
    """A tiny guest launched on the system host, booted, with a shell on its serial console; no NIC."""
    return launch_guest(hosts, guest_media, make_tenant, make_user, run_tasks)


@pytest.fixture
def lab_bridge(second_host, make_user):
    """A network both hosts reach, as a lab's hosts share one L2 segment: a Linux bridge the test makes (no
    address, IPv6 off before it is up, no uplink: nothing leaves it) and a portal network of mode "existing
    bridge" over it, which the portal defines on each host as it needs it. Removed afterwards with the
    libvirt networks (request it before ``hosts``: the guests go first)."""
    name = f"lct{secrets.token_hex(4)}"
    subprocess.run(["ip", "link", "add", "name", name, "type", "bridge"], check=True, timeout=30)
    try:
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")  # no link-local address, no NDP/MLD
        subprocess.run(["ip", "link", "set", name, "up"], check=True, timeout=30)
        network = networks.create_network(
            actor=make_user("admin-network", staff=True),
            name=f"lctest-{name}",
            libvirt_name=f"lctest-{name}",
            mode=Network.Mode.BRIDGE,
            bridge=name,
            dhcp=False,
            is_public=True,
        )
        try:
            yield network
        finally:
            for uri in (QEMU_URI, second_host.tcp_uri):
                with contextlib.suppress(Exception):
                    delete_network(uri, network.libvirt_name)
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, timeout=30)


def nic_on(uri: str, uuid: str) -> tuple[str, str, str, str, str]:
    """The guest's NIC as the host runs it: MAC, libvirt network, its filter's name, the bridge its tap device is
    on (read from the kernel) and the tap; asserts that the host's network filter driver bound the filter to it."""
    conn = connect(uri)
    nic = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(0)).find("devices/interface")  # noqa: S314
    assert nic is not None, "no NIC"
    tap = nic.find("target").get("dev")
    bridge = Path(f"/sys/class/net/{tap}/master").resolve().name
    bindings = {b.portDev(): b.filterName() for b in conn.listAllNWFilterBindings(0)}
    assert bindings.get(tap) == nic.find("filterref").get("filter"), bindings
    return nic.find("mac").get("address"), nic.find("source").get("network"), bindings[tap], bridge, tap


def bound_taps(uri: str) -> set[str]:
    return {b.portDev() for b in connect(uri).listAllNWFilterBindings(0)}


def taps_on(bridge: str) -> set[str]:
    return set(os.listdir(f"/sys/class/net/{bridge}/brif"))


@pytest.fixture
def nic_guest(lab_bridge, hosts, guest_media, make_tenant, make_user, run_tasks):
    """The tiny guest with a NIC on ``lab_bridge``, its anti-spoofing filter bound."""
    return launch_guest(hosts, guest_media, make_tenant, make_user, run_tasks, network=lab_bridge)


class Ticker:
    """The guest's ticker as its serial console shows it, on whichever host the guest runs: every tick seen, in
    order (a restarted guest would count from 1 again). Read from the console stream, not the log file: here
    both daemons' virtlogd write the same log path, and a destination starting its QEMU truncates it."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def past(self, uri: str, uuid: str, timeout: float = 60) -> int:
        """Wait for a tick beyond the last one seen; the newest."""
        above = self.seen[-1] if self.seen else 0
        with GuestShell(uri, uuid) as shell:
            fresh = [n for n in shell.wait_for_number(rb"TICK(\d+)\r?\n", above, timeout) if n > above]
        self.seen += fresh
        assert self.seen == sorted(set(self.seen)), f"the ticker went back: the guest restarted ({self.seen[-20:]})"
        return self.seen[-1]


def start_ticker(uri: str, uuid: str) -> Ticker:
    with GuestShell(uri, uuid) as shell:
        shell.ready()
        shell.console.write(b"(n=0; while :; do n=$((n+1)); echo TICK$n >/dev/ttyS0; sleep 0.2; done) &\r")
    ticker = Ticker()
    ticker.past(uri, uuid)
    return ticker


def on_host(uri: str, uuid: str) -> str | None:
    try:
        dom = connect(uri).lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return None
    state = dom.state()[0]
    return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused"}.get(state, "shutoff")


def checksums(shell: GuestShell) -> str:
    status, output = shell.run(
        f"dd if=/dev/vda bs=1M skip={DATA_AT_MIB} count={DATA_MIB} 2>/dev/null | md5sum; "
        "dd if=/dev/vda bs=1M count=20 2>/dev/null | md5sum"
    )
    assert status == 0, output
    sums = re.findall(r"\b([0-9a-f]{32})\b", output)
    assert len(sums) == 2, output
    return " ".join(sums)


def admin(make_user):
    return make_user("admin-migrate", staff=True)


def test_live_there_and_back_then_cold_with_copied_storage(
    lab_bridge, hosts, nic_guest, make_user, run_tasks, second_host
):
    """With a NIC on a bridge both hosts reach: it keeps its MAC and network, its tap lands on the bridge on
    each host in turn and its port filter (anti-spoofing and security groups) is defined and bound there (the
    source's tap, binding and port filter go)."""
    system, second = hosts
    guest = nic_guest
    staff = admin(make_user)
    uuid = str(guest.uuid)
    *nic, tap = nic_on(QEMU_URI, uuid)
    port = port_filter_name(uuid)
    assert nic == [guest.mac_address, lab_bridge.libvirt_name, port, lab_bridge.bridge]
    assert taps_on(lab_bridge.bridge) == {tap}
    with GuestShell(system.uri, uuid) as shell:
        shell.ready()
        status, output = shell.run(
            f"dd if=/dev/urandom of=/dev/vda bs=1M seek={DATA_AT_MIB} count={DATA_MIB} conv=fsync 2>/dev/null"
        )
        assert status == 0, output
        before = checksums(shell)
    ticker = start_ticker(system.uri, uuid)

    # live, system -> second: the scheduler picks the only other host
    operation = ok(run_tasks(lambda: moves.migrate_instance(actor=staff, instance=guest)))
    guest.refresh_from_db()
    assert (guest.host, guest.migration_target, guest.task, guest.state) == (second, None, "", Instance.State.RUNNING)
    assert on_host(QEMU_URI, uuid) is None and on_host(second_host.tcp_uri, uuid) == "running"
    assert operation.message == "Migrated." and operation.progress == 100
    result = operation.params["result"]
    assert result["seconds"] > 0 and isinstance(result["downtime_ms"], int), result
    print(f"\n    live, copy-storage: {result}", end="")
    names = {v.name for v in LibvirtDriver(system.uri).list_volumes(system.storage_pool)}
    assert not any(name.startswith(guest.domain_name) for name in names)  # the source's copies went
    there = {v.name for v in LibvirtDriver(second.uri).list_volumes(second.storage_pool)}
    assert {f"{guest.domain_name}-root.qcow2", f"{guest.domain_name}-seed.iso"} <= there
    assert ImageReplica.objects.get(image=guest.image, host=second).state == ImageReplica.State.READY
    ticker.past(second.uri, uuid)  # the ticker goes on, on the second host
    *there, new_tap = nic_on(second_host.tcp_uri, uuid)
    assert there == nic and taps_on(lab_bridge.bridge) == {new_tap}  # the source's tap went
    assert tap not in bound_taps(QEMU_URI)  # and its filter binding
    assert port not in LibvirtDriver(system.uri).filter_names(port) and LibvirtDriver(second.uri).filter_names(port)
    tap = new_tap
    with GuestShell(second.uri, uuid) as shell:
        shell.ready()
        assert checksums(shell) == before

    # live, back to the system host, named
    ok(run_tasks(lambda: moves.migrate_instance(actor=staff, instance=guest, host=system)))
    guest.refresh_from_db()
    assert guest.host == system and on_host(QEMU_URI, uuid) == "running" and on_host(second_host.tcp_uri, uuid) is None
    ticker.past(system.uri, uuid)
    *here, new_tap = nic_on(QEMU_URI, uuid)
    assert here == nic and taps_on(lab_bridge.bridge) == {new_tap}
    assert tap not in bound_taps(second_host.tcp_uri)
    with GuestShell(system.uri, uuid) as shell:
        shell.ready()
        assert checksums(shell) == before
        shell.run("sync")

    # cold: shut off, the volumes travel through the portal, it boots there with its data
    ok(run_tasks(lambda: lifecycle.request_action(actor=staff, instance=guest, action="stop")))
    guest.refresh_from_db()
    assert guest.state == Instance.State.SHUTOFF
    operation = ok(run_tasks(lambda: moves.migrate_instance(actor=staff, instance=guest, host=second)))
    assert operation.params["live"] is False
    guest.refresh_from_db()
    assert guest.host == second and guest.state == Instance.State.SHUTOFF
    assert on_host(QEMU_URI, uuid) is None and on_host(second_host.tcp_uri, uuid) == "shutoff"
    ok(run_tasks(lambda: lifecycle.request_action(actor=staff, instance=guest, action="start")))
    *there, tap = nic_on(second_host.tcp_uri, uuid)
    assert there == nic and taps_on(lab_bridge.bridge) == {tap}
    with GuestShell(second.uri, uuid) as shell:
        shell.ready(timeout=240)  # it booted there: its shell answers
        assert checksums(shell) == before


def _migrate_in_thread(**kwargs) -> threading.Thread:
    """``moves.migrate_instance`` in a thread of its own; its task runs there too (eager), as a worker runs it."""

    def body() -> None:
        try:
            moves.migrate_instance(**kwargs)
        finally:
            connection.close()

    worker = threading.Thread(target=body, name="lctest-migration")
    worker.start()
    return worker


def _wait_for_job(uri: str, uuid: str, timeout: float = 60) -> None:
    """Until libvirt reports the migration job as running on the source (the event the test acts on)."""
    dom = connect(uri).lookupByUUIDString(uuid)
    deadline = time.monotonic() + timeout
    while dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
        assert time.monotonic() < deadline, "the migration job did not start"
        time.sleep(0.05)


def _incoming_qemu_pid(second_host, name: str, timeout: float = 60) -> int:
    """The destination QEMU's PID once it runs (a PID file left by an earlier attempt names a dead process)."""
    pid_file = second_host.directory / "run" / "libvirt" / "qemu" / f"{name}.pid"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().startswith("qemu"):
                return pid
        assert time.monotonic() < deadline, "the destination QEMU did not start"
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_cancelled_and_failed_migrations_leave_the_guest_where_it_was(hosts, guest, make_user, settings, second_host):
    """Slowed to 2 MiB/s so the job is still running when the test acts on it (the event is libvirt's job)."""
    system, second = hosts
    settings.LABCLOUD_MIGRATION_BANDWIDTH_MIB = 2
    staff = admin(make_user)
    uuid = str(guest.uuid)
    ticker = start_ticker(system.uri, uuid)

    def leftovers() -> list[str]:
        conn = connect(second_host.tcp_uri)
        found = [d.name() for d in conn.listAllDomains(0) if d.UUIDString() == uuid]
        pool = conn.storagePoolLookupByName(second.storage_pool)
        pool.refresh(0)
        return found + [v.name() for v in pool.listAllVolumes(0) if v.name().startswith(guest.domain_name)]

    # cancelled by a cloud admin through the API while the job runs
    worker = _migrate_in_thread(actor=staff, instance=guest, host=second)
    _wait_for_job(QEMU_URI, uuid)
    operation = Operation.objects.get(kind="instance.migrate", state=Operation.State.RUNNING)
    client = APIClient()
    client.force_authenticate(staff)
    assert client.post(f"/api/v1/operations/{operation.pk}/cancel/").status_code == 200
    worker.join(120)
    assert not worker.is_alive()
    operation.refresh_from_db()
    assert operation.state == Operation.State.FAILED
    assert operation.error == "The migration was cancelled; the instance runs where it was."
    guest.refresh_from_db()
    assert (guest.host, guest.migration_target, guest.task, guest.state) == (system, None, "", Instance.State.RUNNING)
    assert on_host(QEMU_URI, uuid) == "running"
    assert leftovers() == []
    ticker.past(system.uri, uuid)  # it runs on, where it was

    # the destination's QEMU dies mid-way
    worker = _migrate_in_thread(actor=staff, instance=guest, host=second)
    _wait_for_job(QEMU_URI, uuid)
    operation = Operation.objects.get(kind="instance.migrate", state=Operation.State.RUNNING)
    os.kill(_incoming_qemu_pid(second_host, guest.domain_name), 9)
    worker.join(120)
    assert not worker.is_alive()
    operation.refresh_from_db()
    assert operation.state == Operation.State.FAILED, operation.message
    assert second.name not in operation.error and "127.0.0.1" not in operation.error  # members read it
    guest.refresh_from_db()
    assert (guest.host, guest.migration_target, guest.task, guest.state) == (system, None, "", Instance.State.RUNNING)
    assert on_host(QEMU_URI, uuid) == "running"
    assert leftovers() == []
    ticker.past(system.uri, uuid)

    # past MIGRATION_TIMEOUT_SECONDS without post-copy: the worker aborts the job itself
    settings.LABCLOUD_MIGRATION_TIMEOUT = 1
    worker = _migrate_in_thread(actor=staff, instance=guest, host=second)
    worker.join(120)
    assert not worker.is_alive()
    operation = Operation.objects.filter(kind="instance.migrate").latest("pk")
    assert operation.state == Operation.State.FAILED
    assert operation.error == "The migration took too long and was stopped; the instance runs where it was."
    guest.refresh_from_db()
    assert (guest.host, guest.migration_target, guest.task, guest.state) == (system, None, "", Instance.State.RUNNING)
    assert on_host(QEMU_URI, uuid) == "running"
    assert leftovers() == []
    ticker.past(system.uri, uuid)


@pytest.fixture
def shared_pool(hosts, second_host):
    """A pool on the second daemon over the system host's test pool directory: one storage, two hosts."""
    system, second = hosts
    conn = libvirt.open(second_host.tcp_uri)
    name = f"{second.name.removesuffix('host2')}shared"
    path = LibvirtDriver(system.uri).conn.storagePoolLookupByName(system.storage_pool).XMLDesc(0)
    target = ET.fromstring(path).findtext("target/path")  # noqa: S314 - libvirt's own XML
    pool_el = ET.Element("pool", type="dir")
    ET.SubElement(pool_el, "name").text = name
    ET.SubElement(ET.SubElement(pool_el, "target"), "path").text = target
    pool = conn.storagePoolCreateXML(ET.tostring(pool_el, encoding="unicode"), 0)  # transient: no files touched
    Host.objects.filter(pk__in=[system.pk, second.pk]).update(storage_share="lctest-shared")
    Host.objects.filter(pk=second.pk).update(storage_pool=name)
    try:
        yield Path(target)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()
        conn.close()


def test_shared_storage_over_tls_post_copy_and_a_retry(
    hosts, shared_pool, guest, make_user, run_tasks, second_host, settings
):
    """Shared storage moves no file; the second host is reached over qemu+tls (its own CA) this time. There,
    switched to post-copy at the deadline; back, the worker "dies" once libvirt has finished and the
    recovery sweep's retry only writes the rows."""
    system, second = hosts
    Host.objects.filter(pk=second.pk).update(uri=second_host.tls_uri)
    second.refresh_from_db()
    second.full_clean()  # the portal takes the TLS URI as an admin would enter it
    staff = admin(make_user)
    uuid = str(guest.uuid)
    root = shared_pool / f"{guest.domain_name}-root.qcow2"
    inode = root.stat().st_ino
    ticker = start_ticker(system.uri, uuid)

    # there, slowed to 2 MiB/s: past the 1 s deadline the job switches to post-copy and finishes there
    settings.LABCLOUD_MIGRATION_BANDWIDTH_MIB = 2
    settings.LABCLOUD_MIGRATION_TIMEOUT = 1
    settings.LABCLOUD_MIGRATION_POST_COPY = True
    operation = ok(run_tasks(lambda: moves.migrate_instance(actor=staff, instance=guest)))
    assert operation.params["result"]["post_copy"] is True, operation.params["result"]
    guest.refresh_from_db()
    assert guest.host.pk == second.pk and on_host(second_host.tcp_uri, uuid) == "running"
    assert on_host(QEMU_URI, uuid) is None
    assert root.stat().st_ino == inode  # the same file, not a copy
    xml = connect(second_host.tcp_uri).lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert f"pool='{Host.objects.get(pk=second.pk).storage_pool}'" in xml
    ticker.past(second.uri, uuid)  # over TLS: the serial console stream
    print(f"\n    shared storage, live, post-copy: {operation.params['result']}", end="")
    settings.LABCLOUD_MIGRATION_POST_COPY = False
    settings.LABCLOUD_MIGRATION_TIMEOUT = 600
    settings.LABCLOUD_MIGRATION_BANDWIDTH_MIB = 0

    # back: the request is taken (its task not run yet); a worker runs the migration up to libvirt's finish
    # and dies before it writes the rows: the instance row still names the second host
    operation = moves.migrate_instance(actor=staff, instance=guest, host=system)
    Operation.objects.filter(pk=operation.pk).update(state=Operation.State.RUNNING, started_at=timezone.now())
    operation.refresh_from_db()
    moving = Instance.objects.select_related("host", "migration_target").get(pk=guest.pk)
    compute_migration.migrate(operation, moving, moving.migration_target, seed=None)
    assert on_host(QEMU_URI, uuid) == "running" and on_host(second_host.tcp_uri, uuid) is None
    guest.refresh_from_db()
    assert (guest.host.pk, guest.migration_target_id, guest.task) == (second.pk, system.pk, "migrate")

    # the worker's heartbeats stopped when it died; the sweep finds it stale and re-queues it; the retry runs
    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert run_tasks(lambda: execution.recover_stale_operations()) == [operation.pk]
    operation = ok(operation)
    assert operation.params["attempts"] == 1 and operation.message == "Migrated."
    guest.refresh_from_db()
    assert (guest.host.pk, guest.migration_target, guest.task) == (system.pk, None, "")
    assert guest.state == Instance.State.RUNNING and on_host(QEMU_URI, uuid) == "running"
    assert root.stat().st_ino == inode
    ticker.past(system.uri, uuid)


def test_drain_moves_every_instance_off_the_host(hosts, guest_media, make_tenant, make_user, run_tasks, second_host):
    system, second = hosts
    tenant, user, image, flavor = tenant_with_tiny_image(make_tenant, make_user, guest_media, "drain")
    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="drain-{n}", flavor=flavor, image=image, count=3
        )
    )
    instances = list(Instance.objects.filter(pk__in=[i.pk for i in launch.instances]).order_by("name"))
    for operation in launch.operations:
        ok(Operation.objects.get(pk=operation.pk))
    for instance in instances:
        assert instance.host == system
        system.lctest.track(str(instance.uuid))
    for instance in instances[1:]:
        ok(run_tasks(lambda instance=instance: lifecycle.request_action(actor=user, instance=instance, action="stop")))
    Host.objects.filter(pk=second.pk).update(enabled=True)
    staff = admin(make_user)

    drain = ok(run_tasks(lambda: moves.drain_host(actor=staff, host=system)))
    assert drain.message == "Every instance moved; the host stays disabled."
    system.refresh_from_db()
    assert not system.enabled
    states = []
    for instance in instances:
        instance.refresh_from_db()
        assert instance.host.pk == second.pk and instance.task == "" and instance.migration_target is None
        uuid = str(instance.uuid)
        assert on_host(QEMU_URI, uuid) is None
        states.append(on_host(second_host.tcp_uri, uuid))
    assert states == ["running", "shutoff", "shutoff"]
    migrations = Operation.objects.filter(kind="instance.migrate").order_by("pk")
    assert [m.state for m in migrations] == [Operation.State.SUCCEEDED] * 3
    assert [m.params["live"] for m in migrations] == [True, False, False]


def test_evacuate_a_dead_host_then_its_old_copy_goes(
    hosts, guest_media, make_tenant, make_user, run_tasks, second_host
):
    system, second = hosts
    tenant, user, image, flavor = tenant_with_tiny_image(make_tenant, make_user, guest_media, "evacuate")
    Host.objects.filter(pk=system.pk).update(enabled=False)  # the launch lands on the second host
    Host.objects.filter(pk=second.pk).update(enabled=True)
    launch = run_tasks(
        lambda: lifecycle.launch_instances(actor=user, tenant=tenant, name="stray", flavor=flavor, image=image)
    )
    ok(Operation.objects.get(pk=launch.operations[0].pk))
    instance = Instance.objects.select_related("host").get(pk=launch.instances[0].pk)
    assert instance.host.pk == second.pk
    uuid = str(instance.uuid)
    system.lctest.track(uuid)
    pid_file = second_host.directory / "run" / "libvirt" / "qemu" / f"{instance.domain_name}.pid"
    qemu_pid = int(pid_file.read_text().strip())
    ok(run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="before")))
    Host.objects.filter(pk=system.pk).update(enabled=True)
    staff = admin(make_user)
    with pytest.raises(ServiceError, match="answers: drain it instead"):
        moves.evacuate_host(actor=staff, host=second, confirm=True)

    kill_libvirtd(second_host)
    try:
        second = host_services.check_host(host=Host.objects.get(pk=second.pk))
        assert second.state == Host.State.DOWN
        with pytest.raises(ServiceError, match="1 of them lose their disks"):
            moves.evacuate_host(actor=staff, host=second)  # the confirmation, with what is lost
        evacuation = ok(run_tasks(lambda: moves.evacuate_host(actor=staff, host=second, confirm=True)))
        assert evacuation.message == "Every instance was rebuilt on another host; the host stays disabled."
        instance.refresh_from_db()
        assert (instance.host.pk, instance.evacuated_from_id, instance.task) == (system.pk, second.pk, "")
        assert instance.state == Instance.State.RUNNING and on_host(QEMU_URI, uuid) == "running"
        assert Path(f"/proc/{qemu_pid}").exists()  # the old copy still runs there: nobody could stop it yet
        rebuilt = Operation.objects.get(kind="instance.evacuate", target_id=str(instance.pk))
        assert rebuilt.tenant_id == tenant.pk  # the member reads what was lost on the instance's operation
        assert rebuilt.message == (
            "Its host went down: rebuilt on another host from its image; what its disks held and its snapshots "
            "were lost."
        )
        assert not Snapshot.objects.filter(instance=instance).exists()
    finally:
        start_libvirtd(second_host)

    counts = compute_for(second).reconcile(Host.objects.get(pk=second.pk))
    assert counts["evacuated_removed"] == 1
    instance.refresh_from_db()
    assert instance.evacuated_from is None
    assert on_host(second_host.tcp_uri, uuid) is None
    deadline = time.monotonic() + 30
    while Path(f"/proc/{qemu_pid}").exists() and Path(f"/proc/{qemu_pid}/comm").read_text().startswith("qemu"):
        assert time.monotonic() < deadline, "the old QEMU still runs"
        time.sleep(0.05)
    pool = connect(second_host.tcp_uri).storagePoolLookupByName(second.storage_pool)
    pool.refresh(0)
    assert [v.name() for v in pool.listAllVolumes(0) if v.name().startswith(instance.domain_name)] == []


@pytest.mark.django_db(transaction=True)
def test_a_batch_spreads_over_both_hosts_and_each_serves_its_guests(
    hosts, guest_media, make_tenant, make_user, run_tasks, second_host
):
    """Two hosts for real: a batch lands on both; the image goes to the second host once and is reused there; the
    VNC console, the serial console, the metrics and snapshots work for its guest; one watcher follows both."""
    system, second = hosts
    tenant, user, image, flavor = tenant_with_tiny_image(make_tenant, make_user, guest_media, "spread")
    Host.objects.filter(pk=second.pk).update(enabled=True)
    launch = run_tasks(
        lambda: lifecycle.launch_instances(
            actor=user, tenant=tenant, name="spread-{n}", flavor=flavor, image=image, count=2
        )
    )
    for operation in launch.operations:
        ok(Operation.objects.get(pk=operation.pk))
    instances = list(Instance.objects.filter(pk__in=[i.pk for i in launch.instances]).select_related("host"))
    assert {i.host_id for i in instances} == {system.pk, second.pk}
    for instance in instances:
        system.lctest.track(str(instance.uuid))
    there = next(i for i in instances if i.host_id == second.pk)
    here = next(i for i in instances if i.host_id == system.pk)
    replica = ImageReplica.objects.get(image=image, host=second)
    copied = (second_host.pool_path / replica.volume).stat().st_ino

    # a third instance sent to the second host by a placement rule reuses the image copy there
    PlacementRule.objects.create(tenant=tenant, host=second)
    third = run_tasks(
        lambda: lifecycle.launch_instances(actor=user, tenant=tenant, name="spread-3", flavor=flavor, image=image)
    )
    ok(Operation.objects.get(pk=third.operations[0].pk))
    assert Instance.objects.get(pk=third.instances[0].pk).host_id == second.pk
    assert ImageReplica.objects.filter(image=image, host=second).count() == 1
    assert (second_host.pool_path / replica.volume).stat().st_ino == copied  # not uploaded again

    adapter = compute_for(second)
    uuid = str(there.uuid)
    with GuestShell(second.uri, uuid) as shell:  # its serial console, over ssh
        shell.ready()
    endpoint = adapter.console(there, ttl=60)
    assert 15900 <= endpoint.vnc_port <= 15999  # the second host's VNC range
    with socket.create_connection((endpoint.vnc_host, endpoint.vnc_port), timeout=10) as vnc:
        assert vnc.recv(12) == b"RFB 003.008\n"
    stats = {s.uuid: s for s in adapter.guest_stats(second)}
    assert uuid in stats and str(here.uuid) not in stats
    snapshot = run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=there, name="before"))
    ok(snapshot)
    assert [s.name for s in LibvirtDriver(second.uri).snapshot_list(uuid)] == ["before"]
    ok(run_tasks(lambda: lifecycle.delete_snapshot(actor=user, snapshot=Snapshot.objects.get(instance=there))))
    assert LibvirtDriver(second.uri).snapshot_list(uuid) == []

    # one watcher, both daemons: a guest powered off behind the portal's back on each host is seen
    watcher = HostWatcher(host_names=[system.name, second.name], reconcile_seconds=300, capacity_seconds=300)
    with watcher_running(watcher):
        assert watcher.ready.wait(30), "the watcher did not finish its first round"
        connect(QEMU_URI).lookupByUUIDString(str(here.uuid)).destroy()
        connect(second_host.tcp_uri).lookupByUUIDString(uuid).destroy()
        deadline = time.monotonic() + 30
        while set(Instance.objects.filter(pk__in=[here.pk, there.pk]).values_list("state", flat=True)) != {
            Instance.State.SHUTOFF
        }:
            assert time.monotonic() < deadline, "the watcher did not see both guests stop"
            time.sleep(0.1)
