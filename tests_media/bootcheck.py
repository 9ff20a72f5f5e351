#!/usr/bin/env python3
"""Prove that the test media boot under libvirt, and show how to drive them.

    .venv/bin/python tests_media/bootcheck.py [--phases disk,install] [--virt qemu] [--uri qemu:///system]

Phases (scripts/build_test_media.sh must have run):
  disk     tiny.qcow2 through a qcow2 overlay, plus a NoCloud seed ISO (label cidata, built with
           pycdlib): waits for LABCLOUD-TINY-BOOTED, checks LABCLOUD-HOSTNAME= and LABCLOUD-SSHKEY=,
           then presses the ACPI power button and waits for the domain to stop.
  install  blank 64 MiB disk + installer.iso: boots from CD, waits for LABCLOUD-INSTALL-DONE and
           power-off, redefines the domain (same UUID) to boot from disk, waits for the marker.
  kernel   direct kernel boot of vmlinuz + initrd.gz (<kernel>/<initrd>), no disk.

Domains are TCG (type 'qemu') by default, 128 MiB, no NIC, serial console to a file, VNC on
127.0.0.1. Everything it creates is named lctest-bootcheck-<random> and is destroyed, undefined
and deleted at the end, also on failure or Ctrl-C. Not part of the test suite: a proof tool and a
reference for the driver authors.
"""
# qemu-img runs with fixed argument lists (no shell):

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pycdlib

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "lctest-bootcheck-"
BOOTED = "LABCLOUD-TINY-BOOTED"
INSTALL_DONE = "LABCLOUD-INSTALL-DONE"
ERROR = "LABCLOUD-ERROR"


class CheckFailed(Exception):
    pass


# ------------------------------------------------------------------ helpers


def fake_ssh_key(comment: str) -> str:
    """A well-formed (but unused) ed25519 public key line."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + secrets.token_bytes(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def build_seed_iso(path: Path, meta_data: str, user_data: str) -> None:
    """NoCloud seed: ISO 9660 labelled cidata, Rock Ridge + Joliet so the names stay lower case."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    for iso_name, name, text in (("/METADATA.;1", "meta-data", meta_data), ("/USERDATA.;1", "user-data", user_data)):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


@dataclass
class Guest:
    """What goes into the domain XML."""

    name: str
    serial_log: Path
    virt: str = "qemu"
    memory_mib: int = 128
    disk: Path | None = None  # qcow2 on virtio (vda)
    cdroms: list[Path] = field(default_factory=list)  # IDE CD-ROMs (hdc, hdd)
    boot: list[str] = field(default_factory=lambda: ["hd"])  # BIOS boot order
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = "console=tty0 console=ttyS0,115200 panic=5"
    uuid: str | None = None  # set to redefine an existing domain

    def xml(self) -> str:
        dom = ET.Element("domain", type=self.virt)
        sub(dom, "name", self.name)
        if self.uuid:
            sub(dom, "uuid", self.uuid)
        sub(dom, "memory", str(self.memory_mib), unit="MiB")
        sub(dom, "vcpu", "1")
        os_ = sub(dom, "os")
        sub(os_, "type", "hvm", arch="x86_64", machine="pc")
        if self.kernel:
            sub(os_, "kernel", str(self.kernel))
            sub(os_, "initrd", str(self.initrd))
            sub(os_, "cmdline", self.cmdline)
        else:
            for dev in self.boot:
                sub(os_, "boot", dev=dev)
        sub(sub(dom, "features"), "acpi")
        sub(dom, "on_poweroff", "destroy")
        sub(dom, "on_reboot", "restart")
        sub(dom, "on_crash", "destroy")
        devices = sub(dom, "devices")
        if self.disk:
            disk = sub(devices, "disk", type="file", device="disk")
            sub(disk, "driver", name="qemu", type="qcow2")
            sub(disk, "source", file=str(self.disk))
            sub(disk, "target", dev="vda", bus="virtio")
        for target, iso in zip(("hdc", "hdd"), self.cdroms, strict=False):
            cd = sub(devices, "disk", type="file", device="cdrom")
            sub(cd, "driver", name="qemu", type="raw")
            sub(cd, "source", file=str(iso))
            sub(cd, "target", dev=target, bus="ide")
            sub(cd, "readonly")
        serial = sub(devices, "serial", type="file")
        sub(serial, "source", path=str(self.serial_log))
        sub(serial, "target", port="0")
        graphics = sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
        sub(graphics, "listen", type="address", address="127.0.0.1")
        sub(sub(devices, "video"), "model", type="vga")
        # No <interface>: the guest has no network at all.
        return ET.tostring(dom, encoding="unicode")


def vnc_port(dom: libvirt.virDomain) -> str:
    desc = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 (libvirt's own XML)
    graphics = desc.find("devices/graphics[@type='vnc']")
    return graphics.get("port", "?") if graphics is not None else "-"


def serial_lines(log: Path) -> list[str]:
    try:
        return log.read_text(errors="replace").replace("\r", "").splitlines()
    except FileNotFoundError:
        return []


def wait_for_marker(dom: libvirt.virDomain, log: Path, marker: str, timeout: float, t0: float) -> float:
    """Seconds from t0 until a serial line starts with marker; fails on LABCLOUD-ERROR or timeout."""
    while True:
        lines = serial_lines(log)
        if any(line.startswith(marker) for line in lines):
            return time.monotonic() - t0
        errors = [line for line in lines if line.startswith(ERROR)]
        if errors:
            raise CheckFailed(f"{dom.name()}: {errors[0]}")
        if time.monotonic() - t0 > timeout:
            tail = "\n    ".join(lines[-15:])
            raise CheckFailed(f"{dom.name()}: no {marker} after {timeout:.0f} s; serial log ends:\n    {tail}")
        time.sleep(0.1)


def wait_for_shutoff(dom: libvirt.virDomain, timeout: float, t0: float) -> float:
    while dom.isActive():
        if time.monotonic() - t0 > timeout:
            raise CheckFailed(f"{dom.name()}: still running after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def markers(log: Path) -> list[str]:
    return [line for line in serial_lines(log) if line.startswith("LABCLOUD-")]


# ------------------------------------------------------------------ the check


class BootCheck:
    def __init__(self, conn: libvirt.virConnect, media: Path, work: Path, virt: str, timeout: float) -> None:
        self.conn = conn
        self.media = media
        self.work = work
        self.virt = virt
        self.timeout = timeout
        self.domains: list[str] = []
        self.results: list[tuple[str, str]] = []

    def name(self, phase: str) -> str:
        name = f"{PREFIX}{phase}-{secrets.token_hex(3)}"
        self.domains.append(name)
        return name

    def result(self, what: str, value: str) -> None:
        self.results.append((what, value))
        print(f"    {what}: {value}", flush=True)

    def start(self, guest: Guest) -> tuple[libvirt.virDomain, float]:
        """Define and start; return the domain and the monotonic time just before the start call."""
        t = time.monotonic()
        dom = self.conn.defineXML(guest.xml())
        t_define = time.monotonic() - t
        t0 = time.monotonic()
        dom.create()
        self.result(
            f"{guest.name} define / start",
            f"{t_define * 1000:.0f} ms / {time.monotonic() - t0:.2f} s (VNC 127.0.0.1:{vnc_port(dom)})",
        )
        return dom, t0

    def cleanup(self) -> None:
        for name in self.domains:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()

    # -- phases

    def phase_disk(self) -> None:
        print("==> disk: tiny.qcow2 overlay + NoCloud seed", flush=True)
        name = self.name("disk")
        overlay = self.work / f"{name}.qcow2"
        t = time.monotonic()
        qemu_img("create", "-q", "-f", "qcow2", "-b", self.media / "tiny.qcow2", "-F", "qcow2", overlay)
        self.result("overlay create", f"{(time.monotonic() - t) * 1000:.0f} ms")

        hostname = f"lctest-vm-{secrets.token_hex(2)}"
        keys = [fake_ssh_key("alice@lctest"), fake_ssh_key("bob@lctest")]
        seed = self.work / f"{name}-seed.iso"
        build_seed_iso(
            seed,
            meta_data=f"instance-id: {name}\nlocal-hostname: {hostname}\n",
            user_data="#cloud-config\n"
            f"hostname: {hostname}\n"
            "ssh_authorized_keys:\n"
            f"  - {keys[0]}\n"
            "users:\n"
            "  - name: debian\n"
            "    ssh_authorized_keys:\n"
            f"      - {keys[1]}\n",
        )
        log = self.work / f"{name}.serial.log"
        dom, t0 = self.start(Guest(name, log, virt=self.virt, disk=overlay, cdroms=[seed]))
        self.result("boot to LABCLOUD-TINY-BOOTED", f"{wait_for_marker(dom, log, BOOTED, self.timeout, t0):.1f} s")
        seen = markers(log)
        if f"LABCLOUD-HOSTNAME={hostname}" not in seen:
            raise CheckFailed(f"hostname {hostname} not printed; markers: {seen}")
        missing = [k for k in keys if f"LABCLOUD-SSHKEY={k}" not in seen]
        if missing:
            raise CheckFailed(f"keys not printed: {missing}; markers: {seen}")
        self.result("seed", f"hostname {hostname} and {len(keys)} SSH keys printed")
        t = time.monotonic()
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        self.result("ACPI shutdown", f"{wait_for_shutoff(dom, 120, t):.1f} s")
        print("\n".join(f"      | {m}" for m in markers(log)), flush=True)

    def phase_install(self) -> None:
        print("==> install: blank disk + installer.iso, then boot from disk", flush=True)
        name = self.name("install")
        disk = self.work / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", disk, "64M")
        log = self.work / f"{name}.install.log"
        guest = Guest(name, log, virt=self.virt, disk=disk, cdroms=[self.media / "installer.iso"], boot=["cdrom", "hd"])
        dom, t0 = self.start(guest)
        self.result(
            "install to LABCLOUD-INSTALL-DONE", f"{wait_for_marker(dom, log, INSTALL_DONE, self.timeout, t0):.1f} s"
        )
        self.result("install to power-off", f"{wait_for_shutoff(dom, 60, t0):.1f} s")
        print("\n".join(f"      | {m}" for m in markers(log)), flush=True)

        # Redefine (same name and UUID) booting from the disk only; the CD stays in the drive.
        guest.uuid = dom.UUIDString()
        guest.boot = ["hd"]
        guest.serial_log = log = self.work / f"{name}.disk.log"
        dom, t0 = self.start(guest)
        self.result(
            "boot installed disk to LABCLOUD-TINY-BOOTED",
            f"{wait_for_marker(dom, log, BOOTED, self.timeout, t0):.1f} s",
        )
        if "LABCLOUD-SEED=none" not in markers(log):
            raise CheckFailed(f"expected no seed; markers: {markers(log)}")
        print("\n".join(f"      | {m}" for m in markers(log)), flush=True)
        dom.destroy()

    def phase_kernel(self) -> None:
        print("==> kernel: direct kernel boot of vmlinuz + initrd.gz", flush=True)
        name = self.name("kernel")
        log = self.work / f"{name}.serial.log"
        guest = Guest(name, log, virt=self.virt, kernel=self.media / "vmlinuz", initrd=self.media / "initrd.gz")
        dom, t0 = self.start(guest)
        self.result("boot to LABCLOUD-TINY-BOOTED", f"{wait_for_marker(dom, log, BOOTED, self.timeout, t0):.1f} s")
        dom.destroy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uri", default="qemu:///system")
    ap.add_argument("--media", type=Path, default=Path(os.environ.get("LABCLOUD_TEST_MEDIA", "var/test-media")))
    ap.add_argument("--virt", default="qemu", choices=["qemu", "kvm"], help="domain type (qemu = TCG)")
    ap.add_argument("--phases", default="disk,install", help="comma-separated: disk, install, kernel")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for each marker")
    args = ap.parse_args(argv)

    media = args.media if args.media.is_absolute() else ROOT / args.media
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - {"disk", "install", "kernel"}
    if unknown:
        ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
    for f in ("tiny.qcow2", "installer.iso", "vmlinuz", "initrd.gz"):
        if not (media / f).is_file():
            ap.error(f"{media / f} missing: run scripts/build_test_media.sh")

    # SIGTERM -> exception, so that the finally clause below still cleans up.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions anyway

    conn = libvirt.open(args.uri)
    # QEMU may run as an unprivileged user: the files must be reachable (mkdtemp makes 0700).
    work = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp"))
    work.chmod(0o755)
    check = BootCheck(conn, media, work, args.virt, args.timeout)
    t0 = time.monotonic()
    try:
        for phase in phases:
            getattr(check, f"phase_{phase}")()
    except CheckFailed as exc:
        for log in sorted(work.glob("*.log")):
            tail = "\n".join(f"      | {line}" for line in serial_lines(log)[-40:])
            print(f"--- {log.name} (last 40 lines)\n{tail}", file=sys.stderr)
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        check.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        conn.close()
    print(f"==> all phases passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
