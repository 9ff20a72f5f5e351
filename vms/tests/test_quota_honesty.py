"""Quota and placement count what a guest can really use and what snapshots and pools really hold (#17, 3, 5).

Written as the attacker acts, on the real ``qemu:///system`` (guests under TCG), with the Celery tasks
run in-process when the request's transaction commits:

- ONE tiny guest is launched. Its member is root in it: they unload the balloon driver, ask for less
  RAM while it runs, write to its disk and take snapshots (with memory) until the snapshot storage
  quota refuses one; then, shut off, they lower and raise the RAM, revert to a snapshot and resize.
  After every step the tenant's quota usage and the scheduler's host load are compared with the
  domain XML libvirt holds (``<memory>``: what the guest can use; ``<vcpu current>``), and the
  snapshot storage in the quota with the root volume's real growth on the host.
- A domain made outside the portal, with more memory than the flavor it is adopted with (defined,
  never booted).
- A host whose storage pool (a 64 MiB tmpfs mounted for the test) is nearly full refuses a launch
  that its nominal disk space would still take, and a snapshot (issue #17, item 5).

Every domain, volume, pool and mount is named ``lctest-…`` and removed after the test.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import subprocess
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest
from django.db.models import Sum

from portal.backends.base import InstanceSpec
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.serial import SerialConsole
from portal.selectors import tenant_usage
from portal.services import ConflictError, QuotaExceeded, ServiceError, set_quota
from vms import hosts, lifecycle
from vms.compute import compute_for
from vms.compute import libvirt as libvirt_compute
from vms.models import Flavor, Host, Instance, Operation, Snapshot, UnmanagedDomain
from vms.scheduler import NoValidHost, host_loads
from vms.tests.compute.test_libvirt_guests import BOOTED, wait_for_marker
from vms.tests.conftest import QEMU_URI, active_image, leftovers

pytestmark = pytest.mark.django_db
MIB = 1024**2
GIB = 1024**3


def ok(operation: Operation) -> Operation:
    assert operation.state == Operation.State.SUCCEEDED, f"{operation.kind}: {operation.error}"
    return operation


def attempt(run_tasks, call):
    """The member's request: the finished operation, or the refusal the service raised."""
    try:
        return run_tasks(call)
    except ServiceError as exc:
        return exc


class GuestShell:
    """The root shell the tiny guest runs on its serial console, driven as its member would."""

    def __init__(self, uri: str, uuid: str) -> None:
        self.output = ""
        self.changed = threading.Condition()
        self.console = SerialConsole(uri, uuid, on_data=self._data, on_end=lambda reason: None)
        self.console.open()

    def _data(self, data: bytes) -> None:
        with self.changed:
            self.output += data.decode(errors="replace")
            self.changed.notify_all()

    def _wait(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while (found := pattern.search(self.output)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.changed.wait(remaining)
            return found

    def run(self, command: str, *, timeout: float = 180) -> None:
        """Run ``command``; fails unless it exits with 0. The shell prints the status as 100+$? after a
        random tag, so the echo of the typed line itself (``$((100+$?))``) never matches."""
        tag = f"LCT{secrets.token_hex(4)}"
        pattern = re.compile(rf"{tag}=(\d+)\r?\n")  # the whole number: output comes in chunks
        line = f"{command}; echo {tag}=$((100+$?))\n".encode()
        # The shell may still be starting (getty flushes what was typed before it): type again until it answers.
        for _attempt in range(6):
            self.console.write(line)
            found = self._wait(pattern, timeout if _attempt else 10)
            if found is not None:
                assert found.group(1) == "100", f"{command!r} failed: …{self.output[-400:]!r}"
                return
        pytest.fail(f"no answer to {command!r}; console ends: {self.output[-400:]!r}")

    def close(self) -> None:
        self.console.close()


def usable(driver, uuid: str) -> tuple[int, int]:
    """(MiB, vCPUs) the guest can use: ``<memory>`` and ``<vcpu current>`` of its config (the next boot)
    and, when it runs, of the live domain; the larger of the two."""
    config = driver.describe(uuid).spec
    memory, vcpus = config.effective_max_memory_mib, config.vcpus
    live = driver.describe(uuid, inactive=False)
    if live.active:
        memory, vcpus = max(memory, live.spec.effective_max_memory_mib), max(vcpus, live.spec.vcpus)
    return memory, vcpus


def assert_counted(*, tenant, host: Host, driver, step: str) -> tuple[int, int]:
    """Quota usage and host load of RAM and vCPUs are exactly what the tenant's domains on ``host`` can use."""
    memory = vcpus = 0
    for instance in Instance.objects.filter(tenant=tenant, host=host):
        m, v = usable(driver, str(instance.uuid))
        memory, vcpus = memory + m, vcpus + v
    usage = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]
    load = host_loads([host])[host.pk]
    assert (usage["ram_mib"], load.ram_mib) == (memory, memory), f"{step}: RAM counted vs <memory> of the domains"
    assert (usage["vcpus"], load.vcpus) == (vcpus, vcpus), f"{step}: vCPUs counted vs <vcpu current>"
    return memory, vcpus


def guest_holds_mib(uuid: str) -> int:
    """Memory the running guest really holds now (the balloon's ``actual``, as QEMU reports it)."""
    return connect(QEMU_URI).lookupByUUIDString(uuid).memoryStats()["actual"] // 1024


@pytest.mark.libvirt_guests
def test_a_member_cannot_use_more_ram_or_snapshot_storage_than_counted(
    portal_host, guest_media, make_tenant, make_user, run_tasks
):
    tenant = make_tenant("honest")
    user = make_user("member-honest")
    admin = make_user("admin-honest", staff=True)
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * MIB)
    flavor = Flavor.objects.create(name="lctest.honest", vcpus=2, ram_mib=192, disk_gib=1)
    bigger = Flavor.objects.create(name="lctest.honest-big", vcpus=2, ram_mib=256, disk_gib=2)
    driver = portal_host.lctest.driver
    pool = portal_host.storage_pool

    def counted(step: str) -> tuple[int, int]:
        return assert_counted(tenant=tenant, host=portal_host, driver=driver, step=step)

    t0 = time.monotonic()
    launch = run_tasks(
        lambda: lifecycle.launch_instances(actor=user, tenant=tenant, name="vm", flavor=flavor, image=image)
    )
    ok(Operation.objects.get(pk=launch.operations[0].pk))
    instance = Instance.objects.get(pk=launch.instances[0].pk)
    uuid = str(instance.uuid)
    wait_for_marker(portal_host.lctest.work / f"{instance.domain_name}.serial.log", BOOTED)
    print(f"\nlaunch → booted: {time.monotonic() - t0:.1f} s")
    assert counted("launch") == (192, 2)

    shell = GuestShell(QEMU_URI, uuid)
    try:
        # ---- item 3: the balloon. The guest's root unloads the balloon driver, then asks for less RAM.
        shell.run("rmmod virtio_balloon")
        outcome = attempt(run_tasks, lambda: lifecycle.set_resources(actor=user, instance=instance, ram_mib=128))
        instance.refresh_from_db()
        counted("RAM lowered while running")
        holds = guest_holds_mib(uuid)
        print(f"balloon driver unloaded, less RAM asked for: the guest holds {holds} MiB, {instance.ram_mib} counted")
        assert holds <= instance.ram_mib, "the guest holds more memory than its quota counts"
        assert isinstance(outcome, ConflictError), outcome
        assert "shut off" in outcome.message and instance.task == ""

        # ---- item 5: snapshots of the running guest while it rewrites the same 32 MiB of its disk.
        limit = 512  # MiB; a running instance's snapshot reserves its RAM (192 MiB) until it is measured
        set_quota(actor=admin, tenant=tenant, limits={"snapshot_mib": limit, "snapshots": -1})
        # Zeros, not /dev/urandom: the disk has no zero detection, so each rewrite of a snapshotted cluster
        # allocates a new one all the same; and a 1 MiB read of urandom once held a TCG guest's vCPU for
        # over 15 minutes (a soft lockup in urandom_read_iter, in a CI run), 13 rewrites of 32 MiB each.
        write = "dd if=/dev/zero of=/dev/vda bs=1M seek=256 count=32 conv=fsync 2>/dev/null"
        shell.run(write)

        def allocation() -> int:
            return driver.find_volume(pool, libvirt_compute.root_volume(instance)).allocation

        base = allocation()  # the disk with its data and no snapshot
        refused, rounds = None, []
        for n in range(1, 13):  # each round adds at least the 32 MiB rewritten: refused by round 11 at the latest
            in_use = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["snapshot_mib"]
            t1 = time.monotonic()
            outcome = attempt(
                run_tasks, lambda n=n: lifecycle.create_snapshot(actor=user, instance=instance, name=f"round-{n}")
            )
            if isinstance(outcome, QuotaExceeded):
                refused = outcome
                break
            ok(outcome)
            took = time.monotonic() - t1
            assert in_use + instance.ram_mib <= limit, f"snapshot {n} was taken over the limit"
            taken = measured_vs_real(tenant, instance, allocation() - base, f"snapshot {n} taken")
            shell.run(write)  # the snapshot alone keeps the old 32 MiB now
            compute_for(portal_host).check_host(portal_host)  # the capacity refresh measures again
            rewritten = measured_vs_real(tenant, instance, allocation() - base, f"after rewrite {n}")
            rounds.append((n, took, taken, rewritten))
        for n, took, taken, rewritten in rounds:
            held = f"{taken / MIB:.1f} MiB, after the rewrite {rewritten / MIB:.1f} MiB"
            print(f"snapshot {n}: {took:.1f} s; its instance's snapshots hold {held}")
        assert refused is not None, f"{len(rounds)} snapshots taken, none refused"
        assert refused.resource == "snapshot_mib" and refused.requested == instance.ram_mib
        assert refused.in_use + refused.requested > limit
        assert allocation() - base <= limit * MIB, "the snapshots hold more than the quota allows"
        assert not Snapshot.objects.filter(instance=instance, name=f"round-{len(rounds) + 1}").exists()
        print(f"refused: {refused.message}")

        t2 = time.monotonic()
        for snapshot in Snapshot.objects.filter(instance=instance):
            ok(run_tasks(lambda snapshot=snapshot: lifecycle.delete_snapshot(actor=user, snapshot=snapshot)))
        print(f"deleting {len(rounds)} snapshots: {time.monotonic() - t2:.1f} s")
        instance.refresh_from_db()
        assert instance.snapshot_bytes == 0
        assert tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["snapshot_mib"] == 0
        assert allocation() - base < 4 * MIB, "deleted snapshots give their blocks back to the pool"
    finally:
        shell.close()

    # ---- item 3 offline: shut off, RAM lowered and raised for real, a revert, a resize.
    ok(run_tasks(lambda: lifecycle.request_action(actor=user, instance=instance, action="stop")))
    counted("shut off")
    ok(run_tasks(lambda: lifecycle.set_resources(actor=user, instance=instance, ram_mib=128)))
    assert counted("RAM lowered while shut off") == (128, 2)
    ok(run_tasks(lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="small")))
    small = Snapshot.objects.get(instance=instance, name="small")
    ok(run_tasks(lambda: lifecycle.set_resources(actor=user, instance=instance, ram_mib=160)))
    assert counted("RAM raised while shut off") == (160, 2)
    with pytest.raises(ConflictError, match="resized"):
        lifecycle.revert_snapshot(actor=user, snapshot=small)
    ok(run_tasks(lambda: lifecycle.set_resources(actor=user, instance=instance, ram_mib=128)))
    ok(run_tasks(lambda: lifecycle.revert_snapshot(actor=user, snapshot=small)))
    assert counted("reverted to a snapshot") == (128, 2)
    ok(run_tasks(lambda: lifecycle.resize_instance(actor=user, instance=instance, flavor=bigger)))
    assert counted("resized") == (256, 2)

    ok(run_tasks(lambda: lifecycle.delete_instance(actor=user, instance=instance)))
    usage = tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]
    assert (usage["ram_mib"], usage["vcpus"], usage["snapshot_mib"]) == (0, 0, 0)
    assert [name for name in leftovers(connect(QEMU_URI), portal_host.lctest.prefix) if "image" not in name] == []


def measured_vs_real(tenant, instance: Instance, real: int, step: str) -> int:
    """The snapshot storage the portal measured (the instance's row, the tenant's usage) against the real growth
    of the root volume on the host since it had no snapshot; returns the measured bytes."""
    instance.refresh_from_db()
    measured = instance.snapshot_bytes
    assert abs(measured - real) <= 4 * MIB, f"{step}: measured {measured / MIB:.1f} MiB, real {real / MIB:.1f} MiB"
    total = Instance.objects.filter(tenant=tenant).aggregate(n=Sum("snapshot_bytes"))["n"] or 0
    assert tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]["snapshot_mib"] == math.ceil(total / MIB), step
    return measured


def test_an_adopted_domain_counts_the_memory_it_can_use(portal_host, make_tenant, make_user):
    """A domain made outside the portal with 256 MiB (ballooned to 128) adopted with a 128 MiB flavor."""
    admin = make_user("admin-adopt", staff=True)
    tenant = make_tenant("adopting")
    flavor = Flavor.objects.create(name="lctest.adopt", vcpus=1, ram_mib=128, disk_gib=1)
    driver = portal_host.lctest.driver
    uuid = portal_host.lctest.track(str(uuidlib.uuid4()))
    driver.define(
        InstanceSpec(
            uuid=uuid,
            name=portal_host.lctest.name("outside"),
            virt_type="qemu",
            vcpus=1,
            max_vcpus=2,
            memory_mib=128,
            max_memory_mib=256,
        )
    )
    compute_for(portal_host).reconcile(portal_host)
    unmanaged = UnmanagedDomain.objects.get(host=portal_host, uuid=uuid)
    instance = hosts.adopt_domain(actor=admin, unmanaged=unmanaged, tenant=tenant, flavor=flavor)
    assert instance.adopted
    assert assert_counted(tenant=tenant, host=portal_host, driver=driver, step="adopted") == (256, 1)


# ---------------------------------------------------------------- a nearly full storage pool


@pytest.fixture
def tiny_pool(lctest_host):
    """A 64 MiB tmpfs mounted for this test, as a transient dir pool ``lctest-…``; unmounted and removed after."""
    conn = connect(QEMU_URI)
    mount = lctest_host.work / "tmpfs"
    mount.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "lctest-tmpfs", str(mount)], check=True)
    name = lctest_host.name("tinypool")
    pool_el = ET.Element("pool", type="dir")
    ET.SubElement(pool_el, "name").text = name
    ET.SubElement(ET.SubElement(pool_el, "target"), "path").text = str(mount)
    pool = None
    try:
        pool = conn.storagePoolCreateXML(ET.tostring(pool_el, encoding="unicode"), 0)  # transient
        yield pool
    finally:
        if pool is not None:
            with contextlib.suppress(libvirt.libvirtError):
                for vol in pool.listAllVolumes(0):
                    with contextlib.suppress(libvirt.libvirtError):
                        vol.delete(0)
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def test_a_host_whose_pool_is_nearly_full_refuses_a_launch(
    tiny_pool, guest_media, make_tenant, make_user, settings, tmp_path
):
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "images"
    tenant = make_tenant("pool-full")
    user = make_user("member-pool")
    tenant.memberships.create(user=user, role="member")
    image = active_image(tenant=tenant, source=guest_media["tiny.qcow2"], name="tiny", virtual_size=20 * MIB)
    flavor = Flavor.objects.create(name="lctest.pool", vcpus=1, ram_mib=128, disk_gib=1)
    # Thin provisioning: nominally the 64 MiB pool takes 6.4 GiB of disks.
    host = Host.objects.create(
        name="lctest-tiny-pool", uri=QEMU_URI, storage_pool=tiny_pool.name(), virt_type=Host.VirtType.QEMU,
        disk_allocation_ratio=100.0,
    )  # fmt: skip
    compute_for(host).check_host(host)  # the capacity refresh
    host.refresh_from_db()
    assert host.state == Host.State.UP and host.pool_capacity == 64 * MIB

    def launch(name: str):
        return lifecycle.launch_instances(actor=user, tenant=tenant, name=name, flavor=flavor, image=image)

    assert launch("first").instances[0].host == host  # placed (its task is not run)

    # Something fills the pool (another tenant's snapshots, images, logs: here a 60 MiB volume).
    filler = ET.Element("volume")
    ET.SubElement(filler, "name").text = "lctest-filler.raw"
    ET.SubElement(filler, "capacity", unit="bytes").text = str(60 * MIB)
    ET.SubElement(filler, "allocation", unit="bytes").text = str(60 * MIB)
    ET.SubElement(ET.SubElement(filler, "target"), "format", type="raw")
    tiny_pool.createXML(ET.tostring(filler, encoding="unicode"), 0)
    compute_for(host).check_host(host)
    host.refresh_from_db()
    print(f"\npool: {host.pool_available / MIB:.1f} MiB free of {host.pool_capacity / MIB:.0f} MiB")
    assert host_loads([host])[host.pk].disk_gib + flavor.disk_gib <= 64 * 100 / 1024  # nominally it still fits
    with pytest.raises(NoValidHost, match="nearly full"):
        launch("second")
    assert list(Instance.objects.filter(tenant=tenant).values_list("name", flat=True)) == ["first"]
    # Nor does a snapshot, which would keep old blocks (and memory) in that pool.
    first = Instance.objects.get(tenant=tenant, name="first")
    Instance.objects.filter(pk=first.pk).update(state=Instance.State.SHUTOFF, task="")
    first.refresh_from_db()
    with pytest.raises(NoValidHost, match="nearly full"):
        lifecycle.create_snapshot(actor=user, instance=first, name="s")
    assert not Snapshot.objects.filter(instance=first).exists()
