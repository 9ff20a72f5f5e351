"""The second libvirt host (scripts/second_host/, issue #14): a libvirtd of its own on this machine.

Real parts only: its own libvirtd, virtlogd and sshd in a mount + UTS namespace, reached over
``qemu+tcp://127.0.0.1:16510/system``, ``qemu+ssh://root@lctest-host2/system`` and
``qemu+tls://127.0.0.1:16511/system`` (its own CA); one tiny guest
under TCG. Checks: it answers over the three transports as a host of its own (hostname, host UUID),
TLS checks certificates both ways (a server or a client from another CA is refused),
listens on loopback only and mounts nothing in the system's namespace; the portal's driver reports
its capacity and pools; a volume streamed into its pool arrives intact; a guest defined as a portal
Host row's instance boots there (serial console over ssh); ``down.sh`` leaves nothing behind and
``up.sh`` brings it back. Timings are printed (run with ``-s``).

The last test stops the session's second host and starts it again: keep it last.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from django.core.exceptions import ValidationError

from portal.backends.base import DiskSpec, InstanceSpec
from portal.backends.libvirt.connection import connect, forget
from portal.backends.libvirt.driver import LibvirtDriver
from portal.backends.libvirt.serial import SerialConsole
from portal.testing_second_host import read_info, run_script, status
from vms.models import validate_libvirt_uri

pytestmark = [pytest.mark.libvirt_guests, pytest.mark.second_host]

QEMU_URI = "qemu:///system"
BOOTED = "LABCLOUD-TINY-BOOTED"
MARKER_TIMEOUT = 240  # generous: a busy 2-core machine slows TCG a lot
SSH_DROPIN = Path("/etc/ssh/ssh_config.d/lctest-host2.conf")


def host_uuid(conn: libvirt.virConnect) -> str:
    return ET.fromstring(conn.getCapabilities()).findtext("host/uuid", "")  # noqa: S314 - libvirt's own XML


def listen_addresses(port: int) -> list[str]:
    """Local addresses with a listening TCP socket on ``port`` (this network namespace, IPv4 and IPv6)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            if width == 8:
                found.append(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.append(f"ipv6:{address}")
    return sorted(found)


def mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in(ns: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and mount_ns(int(p.name)) == ns]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def downloaded_sha256(uri: str, pool: str, name: str) -> str:
    """sha256 of a volume as libvirt's download stream delivers it."""
    conn = libvirt.open(uri)
    try:
        vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
        stream = conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        digest = hashlib.sha256()
        stream.recvAll(lambda _stream, data, _opaque: digest.update(data), None)
        stream.finish()
        return digest.hexdigest()
    finally:
        conn.close()


def test_answers_over_tcp_ssh_and_tls_as_a_host_of_its_own(second_host):
    assert Path(f"/proc/{second_host.pid}/comm").read_text().strip() == "libvirtd"
    seen = {}
    for uri in (second_host.tcp_uri, second_host.ssh_uri, second_host.tls_uri):
        t0 = time.monotonic()
        conn = libvirt.open(uri)
        try:
            seen[uri] = (conn.getHostname(), host_uuid(conn))
        finally:
            conn.close()
        print(f"\n    {uri}: connect + hostname + capabilities {time.monotonic() - t0:.2f} s", end="")
    assert set(seen.values()) == {("lctest-host2", second_host.host_uuid)}

    system = connect(QEMU_URI)
    assert host_uuid(system) not in ("", second_host.host_uuid)
    assert system.getHostname() != "lctest-host2"
    with pytest.raises(libvirt.libvirtError):
        system.storagePoolLookupByName(second_host.pool)

    # Inside its namespace, the system daemon stays reachable through its socket (migrating back peer-to-peer).
    socket = second_host.directory / "system-run" / "libvirt-sock"
    inside = subprocess.run(
        ["ssh", "lctest-host2", "hostname; virsh", "-c", f"'qemu+unix:///system?socket={socket}'", "hostname"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert inside.stdout.split() == ["lctest-host2", system.getHostname()]

    # Loopback only, and nothing of it is mounted in the system's namespace.
    assert listen_addresses(16510) == ["127.0.0.1"]
    assert listen_addresses(16511) == ["127.0.0.1"]
    assert listen_addresses(10022) == ["127.0.0.1"]
    assert mount_ns(second_host.pid) != mount_ns(os.getpid())
    assert str(second_host.directory) not in Path("/proc/self/mountinfo").read_text()


def test_the_portal_takes_its_ssh_uri_and_refuses_tcp_and_key_parameters(second_host):
    validate_libvirt_uri(second_host.ssh_uri)
    with pytest.raises(ValidationError):
        validate_libvirt_uri(second_host.tcp_uri)
    with pytest.raises(ValidationError, match="keyfile, known_hosts"):
        validate_libvirt_uri("qemu+ssh://root@127.0.0.1:10022/system?keyfile=/k&known_hosts=/h")
    # What makes the plain URI work: the ssh_config Host block up.sh wrote for the alias.
    dropin = SSH_DROPIN.read_text()
    assert f"IdentityFile {second_host.directory}/ssh/id_ed25519" in dropin
    assert f"UserKnownHostsFile {second_host.directory}/ssh/known_hosts" in dropin


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def other_ca_client(directory: Path, *, trust: tuple[Path, ...]) -> Path:
    """A pkipath directory whose client certificate another CA (made here) signed, trusting the CA files
    ``trust`` (the other CA's own is ``directory / "otherca.pem"``, made first)."""
    directory.mkdir()
    ca_key, ca_cert = directory / "otherca-key.pem", directory / "otherca.pem"
    _openssl(
        "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=another CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca_cert),
    )  # fmt: skip
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=intruder",
        "-keyout", str(directory / "clientkey.pem"), "-out", str(directory / "client.csr"),
    )  # fmt: skip
    (directory / "client.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(directory / "client.csr"), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(directory / "client.ext"),
        "-out", str(directory / "clientcert.pem"),
    )  # fmt: skip
    (directory / "cacert.pem").write_bytes(b"".join(path.read_bytes() for path in trust))
    return directory


def test_tls_checks_certificates_both_ways(second_host, tmp_path, db):
    """The portal's client refuses a server its CA did not sign; libvirt's client refuses to present a certificate
    its own CA file does not vouch for; the server refuses a client another CA signed. Through the portal: such
    a host row is down, with the reason (cloud admins read it); the right files make it up."""
    from vms import hosts as host_services
    from vms.models import Host

    validate_libvirt_uri(second_host.tls_uri)
    capacity = LibvirtDriver(second_host.tls_uri).capacity(second_host.pool)
    assert capacity.cpus > 0 and capacity.pool_capacity > 0
    base = second_host.tls_uri.split("?", 1)[0]
    ours = second_host.pki / "client" / "cacert.pem"
    log = second_host.directory / "log" / "libvirtd.log"
    cases = {  # pkipath -> what the host row's reason says
        "doubting": (lambda d: (d / "otherca.pem",), "Failed to verify peer's certificate"),  # trusts another CA
        "mismatched": (lambda d: (ours,), "Our own certificate"),  # its certificate is not from the CA it trusts
        "intruder": (lambda d: (d / "otherca.pem", ours), ""),  # trusts the server; the server refuses it
    }
    for case, (trust, reason) in cases.items():
        directory = tmp_path / case
        other_ca_client(directory, trust=trust(directory))
        seen = log.stat().st_size
        with pytest.raises(libvirt.libvirtError) as refused:
            libvirt.open(f"{base}?pkipath={directory}").close()
        print(f"\n    {case}: {refused.value.get_error_message()}", end="")
        assert reason in refused.value.get_error_message()
        with log.open("rb") as fh:
            fh.seek(seen)
            server_said = fh.read()
        if case == "intruder":  # refused by the server, not by the client
            assert b"Failed to verify peer's certificate" in server_said, server_said
        row = Host(
            name=f"lctest-tls-{case}",
            kind=Host.Kind.LIBVIRT,
            uri=f"{base}?pkipath={directory}",
            storage_pool=second_host.pool,
            vnc_listen="127.0.0.1",
            virt_type=Host.VirtType.QEMU,
        )
        row.full_clean()
        row.save()
        checked = host_services.check_host(host=row)
        assert checked.state == Host.State.DOWN and reason in checked.state_reason, checked.state_reason
    trusted = Host.objects.create(
        name="lctest-tls-trusted",
        kind=Host.Kind.LIBVIRT,
        uri=second_host.tls_uri,
        storage_pool=second_host.pool,
        vnc_listen="127.0.0.1",
        virt_type=Host.VirtType.QEMU,
    )
    assert host_services.check_host(host=trusted).state == Host.State.UP


def test_driver_reports_capacity_and_pools(second_host, second_host_row):
    system = LibvirtDriver(QEMU_URI).capacity()
    for uri in (second_host.tcp_uri, second_host_row.uri):
        capacity = LibvirtDriver(uri).capacity(second_host.pool)
        assert capacity.hostname == "lctest-host2"
        assert capacity.pool == second_host.pool
        assert capacity.pool_capacity > 0 and 0 < capacity.pool_available <= capacity.pool_capacity
        assert "qemu" in capacity.virt_types
        # the same machine underneath
        assert (capacity.cpus, capacity.libvirt_version, capacity.arch) == (
            system.cpus,
            system.libvirt_version,
            system.arch,
        )
    assert (second_host_row.uri, second_host_row.storage_pool) == (second_host.ssh_uri, second_host.pool)
    assert (second_host_row.cpus, second_host_row.pool_capacity) == (capacity.cpus, capacity.pool_capacity)

    # Its pools: its own dir pool, and a "default" in its own /var/lib/libvirt/images (same path as the
    # system daemon's, other files: it lives in var/second-host/lib/images).
    conn = connect(second_host.tcp_uri)
    targets = {}
    for name in (second_host.pool, "default"):
        pool = conn.storagePoolLookupByName(name)
        assert pool.isActive() and pool.autostart() and pool.isPersistent()
        targets[name] = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")  # noqa: S314
    assert targets == {second_host.pool: str(second_host.pool_path), "default": "/var/lib/libvirt/images"}
    name = f"{second_host_row.name}-probe.raw"
    vol = LibvirtDriver(second_host.tcp_uri).create_volume("default", name, 2**20, fmt="raw")
    try:
        assert vol.path == f"/var/lib/libvirt/images/{name}"
        assert (second_host.directory / "lib" / "images" / name).exists()
        assert not Path(vol.path).exists()
    finally:
        LibvirtDriver(second_host.tcp_uri).delete_volume("default", name)


@pytest.mark.parametrize("transport", ["tcp", "ssh"])
def test_upload_through_the_storage_stream_arrives_intact(second_host, guest_media, transport):
    uri = second_host.tcp_uri if transport == "tcp" else second_host.ssh_uri
    driver = LibvirtDriver(uri)
    source = guest_media["tiny.qcow2"]
    name = f"lctest-{secrets.token_hex(3)}-upload-{transport}.qcow2"
    t0 = time.monotonic()
    ref = driver.upload_file(second_host.pool, name, source)
    took = time.monotonic() - t0
    try:
        print(f"\n    upload {source.stat().st_size / 2**20:.1f} MiB over {transport}: {took:.2f} s", end="")
        assert ref.path == str(second_host.pool_path / name)
        assert sha256(Path(ref.path)) == sha256(source)
        assert downloaded_sha256(uri, second_host.pool, name) == sha256(source)
    finally:
        assert driver.delete_volume(second_host.pool, name) is True
    assert driver.find_volume(second_host.pool, name) is None


def test_tiny_guest_boots_on_the_second_host(second_host, second_host_row, guest_media, settings):
    """Driven as the portal drives a host: LibvirtDriver on the Host row's URI (ssh), serial console included."""
    driver = LibvirtDriver(second_host_row.uri)
    prefix, pool = settings.LABCLOUD_DOMAIN_PREFIX, second_host_row.storage_pool
    t0 = time.monotonic()
    base = driver.upload_file(pool, f"{prefix}tiny.qcow2", guest_media["tiny.qcow2"])
    overlay = driver.create_overlay(pool, f"{prefix}vm.qcow2", base.name, base.capacity, backing_format="qcow2")
    instance = str(uuid.uuid4())
    spec = InstanceSpec(
        uuid=instance,
        name=f"{prefix}vm",
        memory_mib=128,
        virt_type="qemu",
        disks=(DiskSpec(pool=pool, volume=overlay.name, boot_order=1),),
    )
    assert driver.define(spec).state == "shutoff"
    started = driver.start(instance, paused=True)
    print(f"\n    upload + overlay + define + start over ssh: {time.monotonic() - t0:.2f} s", end="")
    assert started.state == "paused"
    assert 15900 <= started.vnc_port <= 15999  # its own VNC port range (qemu.conf)
    with pytest.raises(libvirt.libvirtError):
        connect(QEMU_URI).lookupByUUIDString(instance)
    qemu_pid = int((second_host.directory / "run" / "libvirt" / "qemu" / f"{spec.name}.pid").read_text())
    assert mount_ns(qemu_pid) == mount_ns(second_host.pid)

    output = bytearray()
    booted = threading.Event()

    def on_data(data: bytes) -> None:
        output.extend(data)
        if BOOTED.encode() in output:
            booted.set()

    console = SerialConsole(second_host_row.uri, instance, on_data=on_data, on_end=lambda _reason: booted.set())
    console.open()
    try:
        t0 = time.monotonic()
        assert driver.resume(instance).state == "running"
        booted.wait(MARKER_TIMEOUT)
        took = time.monotonic() - t0
        tail = bytes(output[-600:]).decode(errors="replace")
        assert BOOTED.encode() in output, f"no {BOOTED} within {took:.0f} s; the console ends:\n{tail}"
        print(f"\n    boot to {BOOTED} (TCG, serial console over ssh): {took:.1f} s", end="")
    finally:
        console.close()
        assert driver.undefine(instance) is True
        for name in (overlay.name, base.name):
            assert driver.delete_volume(pool, name) is True
    conn = connect(second_host.tcp_uri)
    assert [d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)] == []
    assert [v.name() for v in conn.storagePoolLookupByName(pool).listAllVolumes(0)] == []
    assert not Path(f"/proc/{qemu_pid}").exists() or mount_ns(qemu_pid) != mount_ns(second_host.pid)


def test_down_leaves_nothing_behind_and_up_starts_it_again(second_host):
    """down.sh removes its guests (prefixed or not), stops every process of it and removes its files."""
    token = secrets.token_hex(3)
    conn = libvirt.open(second_host.tcp_uri)
    try:
        running = ET.Element("domain", type="qemu")  # no disk, no NIC: QEMU starts and finds nothing to boot
        ET.SubElement(running, "name").text = f"lctest-{token}-cycle"
        ET.SubElement(running, "memory", unit="MiB").text = "32"
        ET.SubElement(ET.SubElement(running, "os"), "type").text = "hvm"
        conn.defineXML(ET.tostring(running, encoding="unicode")).create()
        running.find("name").text = f"unprefixed-{token}"  # the whole daemon is ours: this one goes too
        conn.defineXML(ET.tostring(running, encoding="unicode"))
    finally:
        conn.close()
    run = second_host.directory / "run"
    qemu_pid = int((run / "libvirt" / "qemu" / f"lctest-{token}-cycle.pid").read_text())
    daemons = {name: int((run / f"{name}.pid").read_text()) for name in ("libvirtd", "virtlogd", "sshd")}
    ns = mount_ns(second_host.pid)
    assert ns and ns != mount_ns(os.getpid())
    assert {qemu_pid, *daemons.values()} <= set(pids_in(ns))
    system_uuid = host_uuid(connect(QEMU_URI))

    t0 = time.monotonic()
    output = run_script("down.sh")
    print(f"\n    down.sh (one running guest): {time.monotonic() - t0:.2f} s", end="")
    assert f"removing guest unprefixed-{token}" in output
    assert status() == "down"
    assert pids_in(ns) == []  # libvirtd, virtlogd, sshd and QEMU: the namespace is gone
    assert listen_addresses(16510) == listen_addresses(16511) == listen_addresses(10022) == []
    for gone in ("run", "etc", "lib"):  # run files; domain and pool definitions; domain state
        assert not (second_host.directory / gone).exists()
    assert not SSH_DROPIN.exists()
    assert host_uuid(connect(QEMU_URI)) == system_uuid  # the system daemon was not touched

    t0 = time.monotonic()
    run_script("up.sh")
    print(f"\n    up.sh again (capabilities cached): {time.monotonic() - t0:.2f} s", end="")
    for uri in (second_host.tcp_uri, second_host.ssh_uri, second_host.tls_uri):
        forget(uri)  # this process's cached connections led to the stopped daemon
    assert read_info() == second_host  # same URIs, pool, host UUID
    assert second_host.pid != daemons["libvirtd"]
    conn = libvirt.open(second_host.tcp_uri)
    try:
        assert conn.listAllDomains(0) == []
        assert sorted(p.name() for p in conn.listAllStoragePools(0)) == sorted([second_host.pool, "default"])
    finally:
        conn.close()
