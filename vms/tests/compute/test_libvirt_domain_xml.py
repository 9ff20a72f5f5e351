"""Domain XML builder/parser, finish-install edit, snapshot XML and NoCloud seeds: pure Python, no libvirt."""

from __future__ import annotations

import dataclasses
import json
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from portal.backends.base import DiskSpec, InstanceSpec
from portal.backends.cloudinit import build_nocloud_seed, hostname_from, read_seed
from portal.backends.libvirt.domain import (
    NS,
    build_domain_xml,
    device_name,
    finish_install_xml,
    graphics_with_password,
    parse_domain_xml,
    parse_snapshot_domain,
    parse_snapshot_xml,
    resolve,
    snapshot_xml,
)

NASTY = "<b>&\"' 中文名称"
NASTY_MULTILINE = "first <line> & \"quotes\" 'single'\n第二行 ]]> --> <!-- &amp;"


def spec(**overrides) -> InstanceSpec:
    values = {
        "uuid": str(uuid.uuid4()),
        "name": "lctest-vm",
        "virt_type": "qemu",
        "memory_mib": 128,
        "disks": (DiskSpec(pool="pool", volume="vm.qcow2", boot_order=1),),
    }
    values.update(overrides)
    return InstanceSpec(**values)


def parse_xml(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - our own builder's output


def xml_of(s: InstanceSpec) -> ET.Element:
    return parse_xml(build_domain_xml(s))


# ------------------------------------------------------------------ round trips


def test_round_trip_with_nasty_strings_everywhere():
    s = spec(
        name=f"lctest-{NASTY}",
        title=NASTY,
        description=NASTY_MULTILINE,
        vcpus=2,
        max_vcpus=4,
        memory_mib=256,
        max_memory_mib=1024,
        network=f"net-{NASTY}",
        mac_address="52:54:00:12:34:56",
        serial_log=f"/srv/lab/{NASTY}/serial.log",
        vnc_password="p<&\"'w",
        disks=(
            DiskSpec(pool=f"pool {NASTY}", volume=f"{NASTY}.qcow2", boot_order=2),
            DiskSpec(device="cdrom", path=f"/isos/{NASTY}.iso", boot_order=1),
            DiskSpec(path="/data/extra disk.raw", format="raw", readonly=True),
        ),
        metadata={"tenant": "42", "instance": "7", NASTY: NASTY_MULTILINE, "": "empty key", "k": ""},
    )
    xml = build_domain_xml(s)
    facts = parse_domain_xml(xml)
    assert facts.spec == resolve(s)
    assert facts.spec.name == f"lctest-{NASTY}"
    assert facts.spec.title == NASTY
    assert facts.spec.description == NASTY_MULTILINE
    assert dict(facts.spec.metadata) == dict(s.metadata)
    assert facts.vnc_port is None and facts.domain_id is None and not facts.active
    # And the document is well-formed XML that any parser reads the same way.
    root = parse_xml(xml)
    assert root.findtext("name") == f"lctest-{NASTY}"
    assert root.findtext("title") == NASTY


def test_round_trip_is_stable():
    s = spec(title=NASTY, metadata={"a": NASTY})
    once = build_domain_xml(s)
    again = build_domain_xml(parse_domain_xml(once).spec)
    assert once == again


@pytest.mark.parametrize("bad", ["\x00", "a\x07b", "\x1b[31m", "\ufffe"])
def test_characters_xml_cannot_carry_are_refused(bad):
    with pytest.raises(ValueError, match="control characters"):
        build_domain_xml(spec(description=bad))
    with pytest.raises(ValueError, match="control characters"):
        build_domain_xml(spec(metadata={"k": bad}))


def test_parse_libvirt_rendering_of_a_running_domain():
    """libvirt reports KiB, adds ids, addresses, aliases and the VNC port; the parser reads through that."""
    uid = str(uuid.uuid4())
    xml = f"""<domain type='qemu' id='7' xmlns:lc='{NS}'>
      <name>lctest-run</name><uuid>{uid}</uuid><title>t &amp; &lt;x&gt;</title>
      <metadata><lc:instance os-type='windows' disk-bus='sata' nic-model='e1000'>
        <lc:meta key='tenant'>9</lc:meta></lc:instance></metadata>
      <memory unit='KiB'>262144</memory><currentMemory unit='KiB'>131072</currentMemory>
      <vcpu placement='static' current='2'>4</vcpu>
      <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
      <cpu mode='custom' match='exact' check='full'><model fallback='forbid'>qemu64</model></cpu>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='/p/vm.qcow2' index='2'/><backingStore type='file' index='3'><format type='qcow2'/>
          <source file='/p/base.qcow2'/></backingStore><target dev='sda' bus='sata'/><boot order='1'/>
          <alias name='sata0-0-0'/><address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>
        <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/>
          <readonly/><alias name='ide0-1-0'/></disk>
        <disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='sdb' bus='sata'/></disk>
        <serial type='pty'><source path='/dev/pts/3'/><log file='/l/s.log' append='off'/><target port='0'/></serial>
        <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>
          <listen type='address' address='127.0.0.1'/></graphics>
        <memballoon model='none'/>
      </devices></domain>"""
    facts = parse_domain_xml(xml)
    assert facts.domain_id == 7 and facts.active and facts.vnc_port == 5901
    s = facts.spec
    assert (s.uuid, s.name, s.title) == (uid, "lctest-run", "t & <x>")
    assert (s.vcpus, s.max_vcpus, s.memory_mib, s.max_memory_mib) == (2, 4, 128, 256)
    assert (s.os_type, s.disk_bus, s.nic_model, s.machine) == ("windows", "sata", "e1000", "pc-i440fx-7.2")
    assert (s.cpu_mode, s.cpu_model) == ("custom", "qemu64")
    assert s.metadata == {"tenant": "9"}
    assert s.serial_log == "/l/s.log" and s.memballoon is False and s.network is None
    assert s.disks == (
        DiskSpec(path="/p/vm.qcow2", format="qcow2", bus="sata", target="sda", boot_order=1),
        DiskSpec(device="cdrom", format="raw", bus="ide", target="hdc", readonly=True),
    )


def test_cpu_mode_asked_for_wins_over_libvirts_expansion():
    """libvirt writes qemu64 into a TCG domain without <cpu>; we still read back the mode we asked for."""
    root = xml_of(spec(cpu_mode="default"))
    cpu = ET.SubElement(root, "cpu", mode="custom", match="exact", check="none")
    ET.SubElement(cpu, "model", fallback="forbid").text = "qemu64"
    parsed = parse_domain_xml(ET.tostring(root, encoding="unicode")).spec
    assert (parsed.cpu_mode, parsed.cpu_model) == ("default", None)


# ------------------------------------------------------------------ builder details


def test_linux_defaults_virtio_and_ide_cdrom():
    s = spec(
        network="isolated",
        disks=(
            DiskSpec(pool="p", volume="root", boot_order=1),
            DiskSpec(pool="p", volume="data"),
            DiskSpec(device="cdrom", pool="p", volume="seed.iso"),
        ),
    )
    root = xml_of(s)
    assert root.get("type") == "qemu"
    disks = root.findall("devices/disk")
    assert [(d.get("type"), d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [
        ("volume", "vda", "virtio"),
        ("volume", "vdb", "virtio"),
        ("volume", "hda", "ide"),
    ]
    assert disks[2].find("readonly") is not None and disks[2].find("driver").get("type") == "raw"
    assert disks[0].find("driver").get("type") == "qcow2"
    assert root.find("devices/interface/model").get("type") == "virtio"
    assert root.find("devices/interface/source").get("network") == "isolated"
    assert root.find("devices/rng") is not None
    assert root.find("clock").get("offset") == "utc"
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.find("os/boot") is None  # boot order is per device


def test_windows_defaults_sata_e1000_localtime():
    root = xml_of(spec(os_type="windows", network="isolated"))
    assert root.find("devices/disk/target").attrib == {"dev": "sda", "bus": "sata"}
    assert root.find("devices/interface/model").get("type") == "e1000"
    assert root.find("clock").get("offset") == "localtime"
    assert root.find("devices/rng") is None


def test_windows_with_virtio_drivers():
    root = xml_of(spec(os_type="windows", disk_bus="virtio", nic_model="virtio", network="n"))
    assert root.find("devices/disk/target").attrib == {"dev": "vda", "bus": "virtio"}
    assert root.find("devices/interface/model").get("type") == "virtio"


def test_q35_puts_cdroms_on_sata():
    root = xml_of(spec(machine="q35", disks=(DiskSpec(pool="p", volume="v"), DiskSpec(device="cdrom"))))
    assert [d.find("target").get("dev") for d in root.findall("devices/disk")] == ["vda", "sda"]


def test_explicit_targets_are_kept_and_skipped():
    s = spec(disks=(DiskSpec(path="/a", target="vdb"), DiskSpec(path="/b"), DiskSpec(path="/c")))
    assert [d.target for d in resolve(s).disks] == ["vdb", "vda", "vdc"]


def test_device_names_continue_past_z():
    assert [device_name("vd", i) for i in (0, 25, 26, 27, 701, 702)] == ["vda", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"]


def test_no_network_means_no_nic():
    assert xml_of(spec(network=None)).find("devices/interface") is None


def test_memory_and_vcpus_current_and_maximum():
    root = xml_of(spec(vcpus=2, max_vcpus=8, memory_mib=512, max_memory_mib=2048))
    assert root.find("vcpu").text == "8" and root.find("vcpu").get("current") == "2"
    assert (root.find("memory").text, root.find("memory").get("unit")) == ("2048", "MiB")
    assert root.find("currentMemory").text == "512"
    plain = xml_of(spec(vcpus=2, memory_mib=512))
    assert plain.find("vcpu").text == "2" and plain.find("memory").text == "512"


@pytest.mark.parametrize(
    ("mode", "model", "expected"),
    [
        ("default", None, None),
        ("host-model", None, {"mode": "host-model"}),
        ("host-passthrough", None, {"mode": "host-passthrough"}),
        ("custom", "Haswell-noTSX", {"mode": "custom", "match": "exact", "check": "none"}),
    ],
)
def test_cpu_modes(mode, model, expected):
    s = spec(virt_type="kvm", cpu_mode=mode, cpu_model=model)
    cpu = xml_of(s).find("cpu")
    assert (cpu.attrib if cpu is not None else None) == expected
    if model:
        assert cpu.findtext("model") == model
    assert parse_domain_xml(build_domain_xml(s)).spec == resolve(s)


def test_serial_is_a_pty_console_with_optional_log():
    root = xml_of(spec(serial_log="/srv/lab/x/serial.log"))
    serial = root.find("devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {"file": "/srv/lab/x/serial.log", "append": "off"}
    assert root.find("devices/console").get("type") == "pty"
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}
    assert xml_of(spec()).find("devices/serial/log") is None


def test_vnc_listen_and_password_and_tablet():
    root = xml_of(spec(vnc_listen="10.0.0.5", vnc_password="s3cret"))
    graphics = root.find("devices/graphics")
    assert graphics.attrib == {
        "type": "vnc",
        "port": "-1",
        "autoport": "yes",
        "listen": "10.0.0.5",
        "passwd": "s3cret",
    }
    assert graphics.find("listen").attrib == {"type": "address", "address": "10.0.0.5"}
    assert root.find("devices/input").attrib == {"type": "tablet", "bus": "usb"}
    assert xml_of(spec()).find("devices/graphics").get("listen") == "127.0.0.1"


def test_memballoon():
    assert xml_of(spec()).find("devices/memballoon").get("model") == "virtio"
    assert xml_of(spec()).find("devices/memballoon/stats").get("period") == "10"  # guest memory for the metrics
    assert xml_of(spec(memballoon=False)).find("devices/memballoon/stats") is None
    assert xml_of(spec(memballoon=False)).find("devices/memballoon").get("model") == "none"


def test_metadata_lives_in_our_namespace():
    root = xml_of(spec(metadata={"tenant": "3", "instance": "99"}))
    ours = root.find(f"metadata/{{{NS}}}instance")
    assert ours is not None and ours.get("os-type") == "linux"
    assert {m.get("key"): m.text for m in ours.findall(f"{{{NS}}}meta")} == {"tenant": "3", "instance": "99"}
    assert "labcloud:instance" in build_domain_xml(spec())


def test_iso_install_boots_cd_first():
    s = spec(
        disks=(
            DiskSpec(pool="p", volume="blank.qcow2", boot_order=2),
            DiskSpec(device="cdrom", pool="p", volume="installer.iso", boot_order=1),
        )
    )
    orders = {d.find("target").get("dev"): d.find("boot").get("order") for d in xml_of(s).findall("devices/disk")}
    assert orders == {"vda": "2", "hda": "1"}


# ------------------------------------------------------------------ spec validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"title": "two\nlines"}, "single line"),
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 4, "max_vcpus": 2}, "max_vcpus"),
        ({"memory_mib": 512, "max_memory_mib": 256}, "max_memory_mib"),
        ({"virt_type": "xen"}, "virt_type"),
        ({"cpu_mode": "custom"}, "cpu_model"),
        ({"cpu_mode": "fast"}, "cpu_mode"),
        ({"os_type": "beos"}, "os_type"),
        ({"nic_model": "ne2k"}, "nic_model"),
        ({"metadata": {"k": 1}}, "str"),
        ({"uuid": ""}, "uuid"),
        ({"vnc_password": "123456789"}, "8 bytes"),
        ({"vnc_password": "中文密码"}, "8 bytes"),
    ],
)
def test_spec_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        spec(**overrides)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/a", "pool": "p", "volume": "v"}, "not both"),
        ({"pool": "p"}, "together"),
        ({}, "only a CD-ROM"),
        ({"device": "floppy", "path": "/a"}, "device"),
        ({"path": "/a", "bus": "pci"}, "bus"),
        ({"path": "/a", "boot_order": 0}, "boot_order"),
    ],
)
def test_disk_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiskSpec(**kwargs)


def test_specs_are_frozen_including_metadata():
    s = spec(metadata={"a": "1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "x"
    with pytest.raises(TypeError):
        s.metadata["a"] = "2"
    assert dataclasses.replace(s, title="t").metadata == {"a": "1"}


# ------------------------------------------------------------------ finish install


def install_spec() -> InstanceSpec:
    return spec(
        title=NASTY,
        metadata={"tenant": NASTY},
        disks=(
            DiskSpec(pool="p", volume="disk.qcow2", boot_order=2),
            DiskSpec(device="cdrom", pool="p", volume="installer.iso", boot_order=1),
            DiskSpec(device="cdrom", pool="p", volume="seed.iso"),
        ),
    )


def test_finish_install_removes_the_installer_and_boots_the_disk():
    s = install_spec()
    after = parse_domain_xml(finish_install_xml(build_domain_xml(s), installer="installer.iso")).spec
    assert after.uuid == s.uuid and after.name == s.name and after.title == NASTY
    assert after.metadata == {"tenant": NASTY}
    assert [(d.device, d.volume, d.boot_order) for d in after.disks] == [
        ("disk", "disk.qcow2", 1),
        ("cdrom", "seed.iso", None),
    ]


def test_finish_install_without_name_removes_every_cdrom_with_media():
    after = parse_domain_xml(finish_install_xml(build_domain_xml(install_spec()))).spec
    assert [(d.device, d.boot_order) for d in after.disks] == [("disk", 1)]


def test_finish_install_can_keep_an_empty_drive():
    xml = finish_install_xml(build_domain_xml(install_spec()), installer="installer.iso", keep_empty_drive=True)
    after = parse_domain_xml(xml).spec
    assert [(d.device, d.empty, d.target, d.boot_order) for d in after.disks] == [
        ("disk", False, "vda", 1),
        ("cdrom", True, "hda", None),
        ("cdrom", False, "hdb", None),
    ]


def test_finish_install_drops_os_boot_and_live_id():
    root = parse_xml(build_domain_xml(install_spec()))
    root.set("id", "12")
    ET.SubElement(root.find("os"), "boot", dev="cdrom")
    out = parse_xml(finish_install_xml(ET.tostring(root, encoding="unicode")))
    assert out.get("id") is None and out.find("os/boot") is None


def test_finish_install_needs_a_disk():
    only_cd = spec(disks=(DiskSpec(device="cdrom", path="/i.iso", boot_order=1),))
    with pytest.raises(ValueError, match="no disk"):
        finish_install_xml(build_domain_xml(only_cd))


# ------------------------------------------------------------------ small XML pieces


def test_graphics_password_with_expiry_in_utc():
    xml = build_domain_xml(spec())
    valid_to = datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    graphics = parse_xml(graphics_with_password(xml, "pw&<", valid_to))
    assert graphics.get("passwd") == "pw&<" and graphics.get("passwdValidTo") == "2030-01-02T03:04:05"
    assert parse_xml(graphics_with_password(xml, "pw", None)).get("passwdValidTo") is None


def test_snapshot_xml_round_trip():
    xml = snapshot_xml(f"snap {NASTY}", NASTY_MULTILINE)
    info = parse_snapshot_xml(xml)
    assert (info.name, info.description) == (f"snap {NASTY}", NASTY_MULTILINE)
    libvirt_style = (
        "<domainsnapshot><name>s</name><state>running</state><creationTime>1700000000</creationTime>"
        "<parent><name>p</name></parent></domainsnapshot>"
    )
    info = parse_snapshot_xml(libvirt_style, current=True)
    assert (info.state, info.created, info.parent, info.current) == ("running", 1700000000, "p", True)


def test_the_domain_a_snapshot_brings_back():
    """A revert restores the domain inside the snapshot: its <memory> and vCPUs are read from there."""
    spec = InstanceSpec(uuid=str(uuid.uuid4()), name="vm", vcpus=1, max_vcpus=2, memory_mib=128, max_memory_mib=256)
    snapshot = f"<domainsnapshot><name>s</name><state>shutoff</state>{build_domain_xml(spec)}</domainsnapshot>"
    then = parse_snapshot_domain(snapshot).spec
    assert (then.effective_max_memory_mib, then.memory_mib, then.vcpus) == (256, 128, 1)
    assert parse_snapshot_domain("<domainsnapshot><name>s</name></domainsnapshot>") is None


# ------------------------------------------------------------------ NoCloud seed


KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLE alice@lab", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB bob 中文"]


def test_seed_default_user_data_carries_hostname_and_keys():
    data = build_nocloud_seed(instance_id="i-42", hostname="web-1", ssh_keys=KEYS)
    files = read_seed(data)
    assert files["volume-label"].decode().lower() == "cidata"
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "i-42", "local-hostname": "web-1", "public-keys": KEYS}
    user = files["user-data"].decode()
    assert user.startswith("#cloud-config\n")
    assert yaml.safe_load(user) == {"hostname": "web-1", "ssh_authorized_keys": KEYS}
    # Block style, one key per line: simple parsers (the tiny guest's init) read it too.
    assert "ssh_authorized_keys:\n- ssh-ed25519" in user and "[" not in user
    assert len(data) < 128 * 1024


def test_seed_passes_user_data_through_verbatim():
    mine = "#cloud-config\n# my comment stays\nhostname: mine\nruncmd:\n  - [sh, -c, 'echo <&> 中文']\n"
    files = read_seed(build_nocloud_seed(instance_id="i-1", hostname="web-1", ssh_keys=KEYS, user_data=mine))
    assert files["user-data"] == mine.encode()
    # The portal's facts still reach the guest through meta-data.
    assert yaml.safe_load(files["meta-data"])["public-keys"] == KEYS
    script = b"#!/bin/sh\necho hi\n\x00binary-ok"
    assert read_seed(build_nocloud_seed(instance_id="i-1", hostname="h", user_data=script))["user-data"] == script


def test_seed_quotes_what_could_break_yaml_and_refuses_multiline_values():
    meta = yaml.safe_load(read_seed(build_nocloud_seed(instance_id="id: {x: [1]} # &a *a", hostname="h"))["meta-data"])
    assert meta == {"instance-id": "id: {x: [1]} # &a *a", "local-hostname": "h"}
    with pytest.raises(ValueError, match="single line"):
        build_nocloud_seed(instance_id="a\nb", hostname="h")
    with pytest.raises(ValueError, match="host name"):
        build_nocloud_seed(instance_id="i", hostname="bad host\nname")
    with pytest.raises(ValueError, match="single line"):
        build_nocloud_seed(instance_id="i", hostname="h", ssh_keys=["ssh-ed25519 AAA\nruncmd: [reboot]"])


def test_seed_without_pyyaml_writes_json_which_is_yaml(monkeypatch):
    from portal.backends import cloudinit

    monkeypatch.setattr(cloudinit, "yaml", None)
    files = read_seed(build_nocloud_seed(instance_id="i-9", hostname="h", ssh_keys=KEYS))
    assert json.loads(files["meta-data"]) == yaml.safe_load(files["meta-data"])
    assert yaml.safe_load(files["meta-data"])["public-keys"] == KEYS
    user = files["user-data"].decode()
    assert user.startswith("#cloud-config\n{")
    assert yaml.safe_load(user) == {"hostname": "h", "ssh_authorized_keys": KEYS}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Web Server 1", "web-server-1"),
        ("中文名称", "zhong-wen-ming-cheng"),  # not "instance" for every Chinese name (#19)
        ("计算机网络实验 第3组", "ji-suan-ji-wang-luo-shi-yan-di-3zu"),
        ("Сервер Иван", "server-ivan"),
        ("Ελληνικά", "ellenika"),
        ("café-olé", "cafe-ole"),
        ("🚀", "instance"),  # nothing left: the fallback
        ("--a__b--", "a-b"),
        ("x" * 80, "x" * 63),
    ],
)
def test_hostname_from(name, expected):
    assert hostname_from(name) == expected


def test_a_name_of_emoji_only_names_the_guest_after_its_id():
    from vms.compute.libvirt.adapter import _seed
    from vms.models import Instance

    instance = Instance(name="🚀🚀", uuid=uuid.UUID("1234abcd-0000-4000-8000-000000000000"))
    meta = yaml.safe_load(read_seed(_seed(instance))["meta-data"])
    assert meta["local-hostname"] == "instance-1234abcd"
