"""LibvirtDriver against libvirt's in-memory test:///default driver: lifecycle, errors, snapshots, capacity.

Fast (no guest boots). test:///default never assigns VNC ports and lacks device hot-plug and
volume upload; those paths are exercised on real guests in test_libvirt_guests.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from portal.backends.base import (
    BackendError,
    DiskSpec,
    HostUnreachable,
    InstanceSpec,
    NotFound,
)
from portal.backends.libvirt import connection
from portal.backends.libvirt.domain import resolve
from portal.backends.libvirt.driver import LibvirtDriver

NASTY = "<b>&\"' 中文名称"
POOL = "default-pool"  # test:///default's pool


def make_spec(**overrides) -> InstanceSpec:
    values = {
        "uuid": str(uuid.uuid4()),
        "name": f"lctest-{uuid.uuid4().hex[:8]}",
        "virt_type": "qemu",
        "vcpus": 1,
        "max_vcpus": 4,
        "memory_mib": 128,
        "max_memory_mib": 512,
        "disks": (DiskSpec(pool=POOL, volume="lctest-disk.qcow2", boot_order=1),),
    }
    values.update(overrides)
    return InstanceSpec(**values)


def test_each_host_kind_has_an_adapter_of_the_one_compute_interface():
    from vms.compute import ComputeAdapter, compute_for
    from vms.models import Host

    for kind in Host.Kind.values:
        adapter = compute_for(Host(kind=kind))
        assert isinstance(adapter, ComputeAdapter) and adapter.kind == kind


def test_capacity_and_virt_types(test_driver):
    cap = test_driver.capacity(POOL)
    assert cap.cpus > 0 and cap.memory_mib > 0 and 0 <= cap.free_memory_mib <= cap.memory_mib
    assert cap.hostname and cap.virt_types == ("test",)
    assert cap.libvirt_version.count(".") == 2 and cap.hypervisor_version.count(".") == 2
    assert cap.pool == POOL and cap.pool_capacity > 0
    assert cap.pool_capacity >= cap.pool_available >= 0 and cap.pool_allocation >= 0
    no_pool = test_driver.capacity()
    assert no_pool.pool is None and no_pool.pool_capacity is None
    with pytest.raises(BackendError, match="not found"):
        test_driver.capacity("lctest-no-such-pool")


def test_probe_kvm_is_false_without_kvm_in_capabilities(test_driver):
    assert test_driver.probe_kvm(pool=POOL, disk_volume="whatever") is False


def test_lifecycle(test_driver):
    spec = make_spec()
    state = test_driver.define(spec)
    assert (state.uuid, state.name, state.state) == (spec.uuid, spec.name, "shutoff")
    assert (state.vcpus, state.memory_mib) == (1, 128)
    assert spec.uuid in {s.uuid for s in test_driver.list_instances()}

    assert test_driver.start(spec.uuid).state == "running"
    assert test_driver.start(spec.uuid).state == "running"  # idempotent
    paused = test_driver.pause(spec.uuid)
    assert (paused.state, paused.reason) == ("paused", "user")
    assert test_driver.pause(spec.uuid).state == "paused"
    assert test_driver.resume(spec.uuid).state == "running"
    assert test_driver.resume(spec.uuid).state == "running"
    assert test_driver.reboot(spec.uuid).state == "running"
    assert test_driver.reset(spec.uuid).state == "running"
    off = test_driver.shutdown(spec.uuid)
    assert (off.state, off.reason) == ("shutoff", "shutdown")
    assert test_driver.wait_for_state(spec.uuid, {"shutoff"}, timeout=1).state == "shutoff"
    assert test_driver.shutdown(spec.uuid).state == "shutoff"  # idempotent
    test_driver.start(spec.uuid)
    destroyed = test_driver.power_off(spec.uuid)
    assert (destroyed.state, destroyed.reason) == ("shutoff", "destroyed")
    assert test_driver.power_off(spec.uuid).state == "shutoff"

    test_driver.start(spec.uuid)
    assert test_driver.undefine(spec.uuid) is True  # also stops it
    assert test_driver.undefine(spec.uuid) is False
    with pytest.raises(NotFound, match=spec.uuid):
        test_driver.state(spec.uuid)
    assert spec.uuid not in {s.uuid for s in test_driver.list_instances()}


def test_operations_that_need_a_running_instance(test_driver):
    spec = make_spec()
    test_driver.define(spec)
    for op in (test_driver.reboot, test_driver.reset, test_driver.pause, test_driver.resume):
        with pytest.raises(BackendError, match="not running"):
            op(spec.uuid)
    with pytest.raises(BackendError, match="not running"):
        test_driver.console_target(spec.uuid)
    with pytest.raises(BackendError, match=r"expected running"):
        test_driver.wait_for_state(spec.uuid, {"running"}, timeout=0.3, interval=0.1)


def test_unknown_instance_is_not_found(test_driver):
    missing = str(uuid.uuid4())
    for op in (test_driver.state, test_driver.start, test_driver.shutdown, test_driver.power_off, test_driver.describe):
        with pytest.raises(NotFound, match=missing):
            op(missing)
    assert test_driver.undefine(missing) is False


def test_define_round_trips_through_libvirt_with_nasty_strings(test_driver):
    spec = make_spec(
        name=f"lctest-{NASTY}",
        title=NASTY,
        description=f"{NASTY}\nsecond line ]]> &amp;",
        metadata={"tenant": "42", NASTY: NASTY},
        serial_log=f"/srv/lab/{NASTY}.log",
        network="lctest-isolated",
        mac_address="52:54:00:aa:bb:cc",
        vnc_password="p<&'\"中",  # 8 bytes
        disks=(
            DiskSpec(pool=POOL, volume="lctest-disk.qcow2", boot_order=2),
            DiskSpec(device="cdrom", path=f"/isos/{NASTY}.iso", boot_order=1),
        ),
    )
    test_driver.define(spec)
    facts = test_driver.describe(spec.uuid)
    assert facts.spec == resolve(spec)
    assert test_driver.state(spec.uuid).name == f"lctest-{NASTY}"
    # Redefining the same UUID updates it in place.
    test_driver.define(make_spec(uuid=spec.uuid, name=spec.name, title="renamed 新"))
    assert test_driver.describe(spec.uuid).spec.title == "renamed 新"
    assert [s.uuid for s in test_driver.list_instances()].count(spec.uuid) == 1


def test_define_locks_vnc_with_a_random_password(test_driver):
    """QEMU accepts per-session passwords only if VNC started with one; and no open VNC in between."""
    first, second = make_spec(), make_spec()
    test_driver.define(first)
    test_driver.define(second)
    passwords = {test_driver.describe(s.uuid).spec.vnc_password for s in (first, second)}
    assert len(passwords) == 2 and all(p and len(p) == 8 for p in passwords)


def test_define_refuses_a_second_domain_with_the_same_name(test_driver):
    spec = make_spec()
    test_driver.define(spec)
    with pytest.raises(BackendError, match=spec.name):
        test_driver.define(make_spec(name=spec.name))


def test_live_vcpus_and_memory_within_maximum(test_driver):
    spec = make_spec()
    test_driver.define(spec)
    assert test_driver.set_vcpus(spec.uuid, 2).vcpus == 2  # config only while shut off
    test_driver.start(spec.uuid)
    assert test_driver.set_vcpus(spec.uuid, 4).vcpus == 4
    assert test_driver.set_memory(spec.uuid, 384).memory_mib == 384
    assert test_driver.describe(spec.uuid).spec.vcpus == 4  # the config follows
    with pytest.raises(BackendError, match=r"5 vCPUs is outside 1…4"):
        test_driver.set_vcpus(spec.uuid, 5)
    with pytest.raises(BackendError, match=r"1024 MiB is outside 1…512 MiB"):
        test_driver.set_memory(spec.uuid, 1024)


def test_snapshots(test_driver):
    spec = make_spec()
    test_driver.define(spec)
    test_driver.start(spec.uuid)
    first = test_driver.snapshot_create(spec.uuid, "before", NASTY)
    assert (first.name, first.description, first.state, first.current) == ("before", NASTY, "running", True)
    test_driver.power_off(spec.uuid)
    second = test_driver.snapshot_create(spec.uuid, f"off {NASTY}")
    listed = test_driver.snapshot_list(spec.uuid)
    assert [(s.name, s.current) for s in listed] == [("before", False), (f"off {NASTY}", True)]
    assert listed[1].parent == "before" and second.state == "shutoff"
    assert test_driver.snapshot_revert(spec.uuid, "before").state == "running"
    with pytest.raises(NotFound):
        test_driver.snapshot_revert(spec.uuid, "nope")
    assert test_driver.snapshot_delete(spec.uuid, f"off {NASTY}") is True
    assert test_driver.snapshot_delete(spec.uuid, f"off {NASTY}") is False
    assert [s.name for s in test_driver.snapshot_list(spec.uuid)] == ["before"]
    assert test_driver.undefine(spec.uuid) is True  # with snapshot metadata


def test_finish_install_on_the_driver(test_driver):
    spec = make_spec(
        disks=(
            DiskSpec(pool=POOL, volume="lctest-blank.qcow2", boot_order=2),
            DiskSpec(device="cdrom", pool=POOL, volume="lctest-installer.iso", boot_order=1),
        )
    )
    test_driver.define(spec)
    test_driver.redefine_boot_from_disk(spec.uuid, installer="lctest-installer.iso")
    after = test_driver.describe(spec.uuid).spec
    assert after.uuid == spec.uuid
    assert [(d.device, d.volume, d.boot_order) for d in after.disks] == [("disk", "lctest-blank.qcow2", 1)]


def test_unsupported_calls_become_backend_errors(test_driver):
    spec = make_spec(disks=(DiskSpec(pool=POOL, volume="v"), DiskSpec(device="cdrom", path="/i.iso")))
    test_driver.define(spec)
    test_driver.start(spec.uuid)
    with pytest.raises(BackendError, match="not supported by the hypervisor on test:///default"):
        test_driver.attach_disk(spec.uuid, DiskSpec(path="/extra.img"))
    with pytest.raises(BackendError, match=r"eject CD-ROM .* not supported"):
        test_driver.eject_cdrom(spec.uuid)
    with pytest.raises(BackendError, match="no VNC display"):  # test:/// never assigns VNC ports
        test_driver.console_target(spec.uuid)
    with pytest.raises(ValueError, match="1 to 8 bytes"):
        test_driver.set_vnc_password(spec.uuid, "123456789")
    with pytest.raises(ValueError, match="1 to 8 bytes"):
        test_driver.set_vnc_password(spec.uuid, "密码密码")  # 4 characters, 12 bytes


def test_storage_volumes_and_overlays(test_driver):
    blank = test_driver.create_volume(POOL, "lctest-base.qcow2", 10 * 1024 * 1024)
    assert (blank.name, blank.capacity) == ("lctest-base.qcow2", 10 * 1024 * 1024)
    overlay = test_driver.create_overlay(POOL, "lctest-vm.qcow2", "lctest-base.qcow2", 1024**3)
    assert overlay.capacity == 1024**3
    with pytest.raises(BackendError, match="smaller than the image"):
        test_driver.create_overlay(POOL, "lctest-small.qcow2", "lctest-base.qcow2", 1024)
    with pytest.raises(BackendError, match="not found"):
        test_driver.create_overlay(POOL, "lctest-x.qcow2", "lctest-missing.qcow2", 1024**3)
    names = {v.name for v in test_driver.list_volumes(POOL)}
    assert {"lctest-base.qcow2", "lctest-vm.qcow2"} <= names
    assert test_driver.find_volume(POOL, "lctest-vm.qcow2") == test_driver.find_volume(POOL, "lctest-vm.qcow2")
    assert test_driver.delete_volume(POOL, "lctest-vm.qcow2") is True
    assert test_driver.delete_volume(POOL, "lctest-vm.qcow2") is False
    assert test_driver.find_volume(POOL, "lctest-vm.qcow2") is None
    with pytest.raises(BackendError, match=r"upload of 'lctest-seed\.iso'"):  # test:/// has no volume upload
        test_driver.upload_bytes(POOL, "lctest-seed.iso", b"x" * 100)


def test_unreachable_host():
    with pytest.raises(HostUnreachable, match="cannot connect to test:///nonexistent"):
        LibvirtDriver("test:///nonexistent-lctest.xml").list_instances()


class FakeLibvirtError(libvirt.libvirtError):
    def __init__(self, code: int, domain: int, message: str) -> None:
        Exception.__init__(self, message)
        self.err = (code, domain, message)

    def get_error_code(self):
        return self.err[0]

    def get_error_domain(self):
        return self.err[1]

    def get_error_message(self):
        return self.err[2]


@pytest.mark.parametrize(
    ("code", "domain", "kind"),
    [
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, HostUnreachable),  # "Cannot write data: Broken pipe"
        (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, HostUnreachable),  # "client socket is closed"
        (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE, HostUnreachable),
        (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, NotFound),
        (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE, NotFound),
        (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, BackendError),
    ],
)
def test_error_translation(test_driver, code, domain, kind):
    cached = connection.connect("test:///default")
    error = test_driver._translate(FakeLibvirtError(code, domain, "it broke <&>"), "do things")
    assert type(error) is kind
    assert error.message.startswith("do things: ") and error.message.endswith("it broke <&>")
    # A lost connection is dropped from the cache, so the next call reconnects.
    assert (connection.connect("test:///default") is cached) is (kind is not HostUnreachable)


def test_one_connection_per_uri_shared_by_threads(test_driver):
    spec = make_spec()
    test_driver.define(spec)
    test_driver.start(spec.uuid)
    first = connection.connect("test:///default")
    assert connection.connect("test:///default") is first

    def work(_):
        driver = LibvirtDriver("test:///default")
        return driver.state(spec.uuid).state, id(driver.conn)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(200)))
    assert {r[0] for r in results} == {"running"}
    assert {r[1] for r in results} == {id(first)}
    fresh = connection.reconnect("test:///default")
    assert fresh is not first and connection.connect("test:///default") is fresh
    # (test:///default forgets its domains when its last connection closes: nothing to check there.)


def test_event_loop_and_keepalive_in_a_fresh_process():
    """start_event_loop() once, then connections get keepalive and a close callback (no stray errors)."""
    code = (
        "from portal.backends.libvirt import connection as c\n"
        "assert c.start_event_loop() is True and c.start_event_loop() is False\n"
        "conn = c.connect('test:///default')\n"
        "assert conn.isAlive() and c.event_loop_running()\n"
        "c.forget('test:///default')\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_drivers_never_import_django_or_models():
    """The design rule: portal/backends/ speaks libvirt and dataclasses only."""
    root = Path(__file__).resolve().parents[3] / "portal" / "backends"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in {"django", "vms", "images"} or name.endswith(".models"):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
