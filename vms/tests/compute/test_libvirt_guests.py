"""Real guests on qemu:///system under TCG (``<domain type='qemu'>``), driven only through LibvirtDriver.

Three guest boots in all (~10–15 s each on a 2-core machine):

1. launch from an image: tiny.qcow2 uploaded into a private pool → 1 GiB qcow2 overlay → NoCloud
   seed ISO → define → start → hostname and SSH keys printed from the seed; on the running guest:
   VNC target and one-time passwords (real VNC logins), live vCPU hot-add, balloon, disk hot-plug
   and unplug, CD-ROM eject, pause/resume; then ACPI shutdown, offline internal snapshots,
   undefine and delete: nothing left.
2./3. install from ISO: blank 64 MiB disk + installer.iso, CD first → LABCLOUD-INSTALL-DONE →
   power-off → finish install (CD removed, boot from disk, same UUID) → boots the installed disk.

Plus two cases that boot nothing: a define-only round trip of nasty strings through the real
QEMU driver, and the KVM probe (QEMU aborts at once on these machines' /dev/kvm).

Every domain, volume and pool is named ``lctest-…`` and removed by the ``lctest_host`` fixture,
also on failure. Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from portal.backends.base import BackendError, DiskSpec, InstanceSpec
from portal.backends.cloudinit import build_nocloud_seed, hostname_from
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.domain import resolve
from vms.tests.conftest import QEMU_URI, fake_ssh_key, leftovers

pytestmark = pytest.mark.libvirt_guests

BOOTED = "LABCLOUD-TINY-BOOTED"
INSTALL_DONE = "LABCLOUD-INSTALL-DONE"
POWEROFF = "LABCLOUD-POWEROFF"
ERROR = "LABCLOUD-ERROR"
MARKER_TIMEOUT = 240  # generous: a busy 2-core machine slows TCG a lot
GIB = 1024**3
NASTY = "<b>&\"' 中文名称"


class Clock:
    def __init__(self, title: str) -> None:
        self.title = title
        self.t = time.monotonic()
        print(f"\n[{title}]")

    def lap(self, what: str) -> float:
        now = time.monotonic()
        took, self.t = now - self.t, now
        print(f"    {what}: {took:.2f} s", flush=True)
        return took


def serial_lines(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").replace("\r", "").splitlines()
    except FileNotFoundError:
        return []


def markers(log: Path) -> list[str]:
    return [line for line in serial_lines(log) if line.startswith("LABCLOUD-")]


def wait_for_marker(log: Path, marker: str, timeout: float = MARKER_TIMEOUT) -> str:
    """The first serial line starting with ``marker``; fails early on LABCLOUD-ERROR."""
    deadline = time.monotonic() + timeout
    while True:
        lines = serial_lines(log)
        for line in lines:
            if line.startswith(marker):
                return line
            if line.startswith(ERROR):
                pytest.fail(f"guest reported {line}; markers: {markers(log)}")
        if time.monotonic() > deadline:
            tail = "\n    ".join(lines[-20:])
            pytest.fail(f"no {marker} after {timeout} s; serial log ends:\n    {tail}")
        time.sleep(0.1)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("VNC server closed the connection")
        data += chunk
    return data


def vnc_login(host: str, port: int, password: str) -> bool:
    """RFB 3.8 handshake with VNC authentication (DES of the challenge); True if the server accepts."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode().ljust(8, b"\0")[:8])  # VNC's bit order
    with socket.create_connection((host, port), timeout=10) as sock:
        assert _recv_exact(sock, 12).startswith(b"RFB ")
        sock.sendall(b"RFB 003.008\n")
        types = list(_recv_exact(sock, _recv_exact(sock, 1)[0]))
        assert types == [2], f"expected VNC authentication only, got security types {types}"
        sock.sendall(b"\x02")
        encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - VNC auth is DES-ECB (k1=k2=k3)
        sock.sendall(encryptor.update(_recv_exact(sock, 16)) + encryptor.finalize())
        return _recv_exact(sock, 4) == b"\0\0\0\0"


def volume_backing_path(pool: str, name: str) -> str | None:
    vol = connect(QEMU_URI).storagePoolLookupByName(pool).storageVolLookupByName(name)
    return ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")  # noqa: S314


def test_launch_from_image_with_seed_then_live_operations(lctest_host, guest_media):
    h, d = lctest_host, lctest_host.driver
    clock = Clock("launch from image")

    base = d.upload_file(h.pool, h.name("tiny.qcow2"), guest_media["tiny.qcow2"])
    clock.lap(f"upload tiny.qcow2 ({base.capacity // 2**20} MiB) into the pool")
    overlay = d.create_overlay(h.pool, h.name("vm.qcow2"), h.name("tiny.qcow2"), GIB, backing_format="qcow2")
    clock.lap("create 1 GiB overlay")
    assert overlay.capacity == GIB and overlay.allocation < 2**20
    assert volume_backing_path(h.pool, overlay.name) == base.path
    with pytest.raises(BackendError, match="has a backing file itself"):  # cached images must stand alone
        d.create_overlay(h.pool, h.name("chain.qcow2"), overlay.name, GIB)
    with pytest.raises(BackendError, match="smaller than the image"):
        d.create_overlay(h.pool, h.name("small.qcow2"), base.name, 2**20)

    instance_uuid = h.track(str(uuid.uuid4()))
    hostname = hostname_from(f"lctest {NASTY} vm {instance_uuid[:6]}")
    keys = [fake_ssh_key("alice@lctest"), fake_ssh_key("bob@lctest")]
    seed = build_nocloud_seed(instance_id=instance_uuid, hostname=hostname, ssh_keys=keys)
    d.upload_bytes(h.pool, h.name("seed.iso"), seed)
    clock.lap(f"build + upload seed ISO ({len(seed) // 1024} KiB)")

    log = h.work / "serial.log"
    spec = InstanceSpec(
        uuid=instance_uuid,
        name=h.name("vm"),
        title=NASTY,
        description=f"{NASTY}\nlaunched by the driver tests",
        vcpus=1,
        max_vcpus=2,
        memory_mib=128,
        virt_type="qemu",
        cpu_mode="default",
        disks=(
            DiskSpec(pool=h.pool, volume=overlay.name, boot_order=1),
            DiskSpec(device="cdrom", pool=h.pool, volume=h.name("seed.iso")),
        ),
        serial_log=str(log),
        metadata={"tenant": "lctest", "instance": NASTY},
    )
    assert d.define(spec).state == "shutoff"
    assert d.describe(instance_uuid).spec.metadata == spec.metadata
    clock.lap("define")
    started = d.start(instance_uuid)
    clock.lap("start call")
    assert started.state == "running" and started.vnc_port and started.vnc_port >= 5900

    booted = wait_for_marker(log, BOOTED)
    clock.lap("boot to LABCLOUD-TINY-BOOTED")
    assert booted.startswith(f"{BOOTED} hostname={hostname} ")
    seen = markers(log)
    assert f"LABCLOUD-INSTANCE-ID={instance_uuid}" in seen
    assert f"LABCLOUD-HOSTNAME={hostname}" in seen
    assert [m for m in seen if m.startswith("LABCLOUD-SSHKEY=")] == [f"LABCLOUD-SSHKEY={k}" for k in keys]

    # Console: VNC on loopback, locked by define()'s random password until a session sets its own.
    target = d.console_target(instance_uuid)
    assert (target.host, target.port, target.password) == ("127.0.0.1", started.vnc_port, None)
    config_password = d.describe(instance_uuid).spec.vnc_password
    assert config_password and vnc_login(target.host, target.port, config_password)
    with_pw = d.set_vnc_password(instance_uuid, "lc-Pw1", valid_seconds=60)
    assert (with_pw.host, with_pw.port, with_pw.password) == (target.host, target.port, "lc-Pw1")
    assert vnc_login(target.host, target.port, "lc-Pw1")
    assert not vnc_login(target.host, target.port, config_password)
    assert not vnc_login(target.host, target.port, "wrong")
    assert d.describe(instance_uuid).spec.vnc_password == config_password  # live only: the config keeps its own
    d.set_vnc_password(instance_uuid, "lc-Pw2", valid_seconds=1)
    time.sleep(2.2)
    assert not vnc_login(target.host, target.port, "lc-Pw2")  # expired
    clock.lap("console target + one-time VNC passwords (login, wrong, expired)")

    # Live vCPU hot-add within the maximum (TCG supports CPU hot-plug on i440fx).
    try:
        grown = d.set_vcpus(instance_uuid, 2)
    except BackendError as exc:  # pragma: no cover - depends on QEMU/libvirt
        assert "set vCPUs" in exc.message and "live" in exc.message
        print(f"    vCPU hot-add refused: {exc.message}")
    else:
        assert grown.vcpus == 2
        assert d.describe(instance_uuid).spec.vcpus == 2
    with pytest.raises(BackendError, match=r"3 vCPUs is outside 1…2"):
        d.set_vcpus(instance_uuid, 3)
    clock.lap("live vCPU hot-add 1 → 2")

    # Memory: the balloon target moves live within the maximum (128 MiB here); the config follows.
    d.set_memory(instance_uuid, 112)
    assert d.describe(instance_uuid).spec.memory_mib == 112
    with pytest.raises(BackendError, match=r"256 MiB is outside 1…128 MiB"):
        d.set_memory(instance_uuid, 256)
    clock.lap("live memory (balloon) 128 → 112 MiB")

    # Hot-plug a data disk and take it out again (the guest acknowledges the ACPI unplug).
    data = d.create_volume(h.pool, h.name("data.qcow2"), 16 * 2**20)
    attached = d.attach_disk(instance_uuid, DiskSpec(pool=h.pool, volume=data.name))
    assert (attached.target, attached.bus) == ("vdb", "virtio")
    for inactive in (False, True):
        assert "vdb" in [x.target for x in d.describe(instance_uuid, inactive=inactive).spec.disks]
    assert d.detach_disk(instance_uuid, "vdb") is True
    assert "vdb" not in [x.target for x in d.describe(instance_uuid).spec.disks]
    assert d.detach_disk(instance_uuid, "vdz") is False
    clock.lap("hot-plug + unplug a 16 MiB data disk")

    # The seed served its purpose: eject it, live and in the config.
    assert d.eject_cdrom(instance_uuid) == ["hda"]
    for inactive in (False, True):
        cdroms = [x for x in d.describe(instance_uuid, inactive=inactive).spec.disks if x.device == "cdrom"]
        assert [(c.target, c.empty) for c in cdroms] == [("hda", True)]
    clock.lap("eject seed CD-ROM")

    assert d.pause(instance_uuid).state == "paused"
    assert d.resume(instance_uuid).state == "running"
    clock.lap("pause + resume")

    d.shutdown(instance_uuid)
    off = d.wait_for_state(instance_uuid, {"shutoff"}, timeout=90)
    clock.lap("ACPI shutdown to shutoff")
    assert off.reason == "shutdown"
    assert POWEROFF in markers(log)

    # Internal qcow2 snapshots of the stopped instance.
    snap = d.snapshot_create(instance_uuid, "after-first-boot", NASTY)
    assert (snap.name, snap.description, snap.state) == ("after-first-boot", NASTY, "shutoff")
    assert [s.name for s in d.snapshot_list(instance_uuid)] == ["after-first-boot"]
    assert d.snapshot_revert(instance_uuid, "after-first-boot").state == "shutoff"
    assert d.snapshot_delete(instance_uuid, "after-first-boot") is True
    d.snapshot_create(instance_uuid, "kept")  # undefine must cope with snapshot metadata
    clock.lap("offline snapshot create/list/revert/delete")

    assert d.undefine(instance_uuid) is True
    for name in (overlay.name, h.name("seed.iso"), base.name, data.name):
        assert d.delete_volume(h.pool, name) is True
    clock.lap("undefine + delete volumes")
    assert leftovers(connect(QEMU_URI), h.prefix) == []


def test_install_from_iso_then_boot_from_disk(lctest_host, guest_media):
    h, d = lctest_host, lctest_host.driver
    clock = Clock("install from ISO")

    installer = d.upload_file(h.pool, h.name("installer.iso"), guest_media["installer.iso"])
    blank = d.create_volume(h.pool, h.name("disk.qcow2"), 64 * 2**20)
    clock.lap("upload installer.iso + create blank 64 MiB disk")

    instance_uuid = h.track(str(uuid.uuid4()))
    log = h.work / "serial.log"
    spec = InstanceSpec(
        uuid=instance_uuid,
        name=h.name("install"),
        title=f"install {NASTY}",
        memory_mib=128,
        virt_type="qemu",
        disks=(
            DiskSpec(pool=h.pool, volume=blank.name, boot_order=2),
            DiskSpec(device="cdrom", pool=h.pool, volume=installer.name, boot_order=1),
        ),
        serial_log=str(log),
    )
    d.define(spec)
    d.start(instance_uuid)
    wait_for_marker(log, INSTALL_DONE)
    clock.lap("boot installer to LABCLOUD-INSTALL-DONE")
    d.wait_for_state(instance_uuid, {"shutoff"}, timeout=60)
    clock.lap("installer powers off")

    d.redefine_boot_from_disk(instance_uuid, installer=installer.name)
    after = d.describe(instance_uuid).spec
    assert (after.uuid, after.name, after.title) == (instance_uuid, spec.name, spec.title)
    assert [(x.device, x.volume, x.boot_order) for x in after.disks] == [("disk", blank.name, 1)]
    clock.lap("finish install (CD removed, boot from disk)")

    log.unlink()  # the same log file serves the next boot; start from an empty one
    d.start(instance_uuid)
    booted = wait_for_marker(log, BOOTED)
    clock.lap("boot installed disk to LABCLOUD-TINY-BOOTED")
    assert booted.startswith(f"{BOOTED} hostname=labcloud-tiny ")  # no seed: the default name
    assert "LABCLOUD-SEED=none" in markers(log)
    assert INSTALL_DONE not in " ".join(markers(log))

    assert d.power_off(instance_uuid).state == "shutoff"
    assert d.undefine(instance_uuid) is True
    assert d.delete_volume(h.pool, blank.name) and d.delete_volume(h.pool, installer.name)
    clock.lap("power off + undefine + delete volumes")
    assert leftovers(connect(QEMU_URI), h.prefix) == []


def test_nasty_strings_survive_the_real_qemu_driver(lctest_host):
    """Define only (no boot): the QEMU driver keeps names, titles, descriptions and metadata intact."""
    h, d = lctest_host, lctest_host.driver
    spec = InstanceSpec(
        uuid=h.track(str(uuid.uuid4())),
        name=h.name(NASTY),
        title=NASTY,
        description=f"{NASTY}\n]]> <!-- --> &amp;",
        vcpus=1,
        max_vcpus=2,
        memory_mib=128,
        max_memory_mib=256,
        virt_type="qemu",
        disks=(DiskSpec(path=str(h.work / f"{NASTY}.qcow2"), boot_order=1),),
        serial_log=str(h.work / f"{NASTY}.log"),
        vnc_password="p<&'\"x",
        metadata={NASTY: NASTY, "tenant": "1"},
    )
    d.define(spec)
    got = d.describe(spec.uuid).spec
    expected = resolve(spec)
    # QEMU canonicalises the machine type (pc → pc-i440fx-x.y); everything else comes back as written.
    assert got.machine.startswith("pc-i440fx-")
    assert dataclasses.replace(got, machine="pc") == expected
    assert d.state(spec.uuid).name == h.name(NASTY)
    assert d.undefine(spec.uuid) is True


def test_kvm_probe_refuses_this_machines_kvm(lctest_host, guest_media):
    """The probe must prove KVM by booting; on kvm_pvm QEMU aborts at once with host-model (MSR 0x10a)."""
    h, d = lctest_host, lctest_host.driver
    d.upload_file(h.pool, h.name("tiny.qcow2"), guest_media["tiny.qcow2"])
    t = time.monotonic()
    result = d.probe_kvm(pool=h.pool, disk_volume=h.name("tiny.qcow2"), timeout=60, name_prefix=h.name("probe-"))
    print(f"\n    KVM probe: {result} in {time.monotonic() - t:.1f} s")
    if Path("/sys/module/kvm_pvm").exists():
        assert result is False
    assert leftovers(connect(QEMU_URI), h.name("probe-")) == []
