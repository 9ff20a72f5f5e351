#!/usr/bin/env python3
"""Build the tiny test guest: busybox initramfs + kernel on a bootable FAT disk image.

Called by scripts/build_test_media.sh (see tests_media/README.md); needs no root.

Inputs: a Debian kernel package and busybox-static, both extracted with ``dpkg-deb -x``.
Outputs in --out:
  vmlinuz, initrd.gz   the kernel and initramfs (also usable with libvirt's <kernel>/<initrd>)
  tiny.raw             20 MiB partition-less FAT disk with syslinux (bundled into installer.iso)
  tiny.qcow2           the same disk as qcow2
  modules.txt          kernel version and the modules in the initramfs, in load order
Host tools: cpio, gzip, mformat + mcopy (mtools), syslinux, qemu-img.
"""
# Subprocesses run fixed host tools with argument lists (no shell):

from __future__ import annotations

import argparse
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What the guest needs; their dependencies are added from each module's .modinfo.
MODULES = [
    # disks and CD-ROMs: virtio, IDE (machine "pc"), SATA (machine "q35"), SCSI
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "ata_piix",
    "ahci",
    "sd_mod",
    "sr_mod",
    # a NIC if a test attaches one (isolated networks only), console, balloon
    "virtio_net",
    "virtio_console",
    "virtio_balloon",
    # filesystems: ISO 9660 (seed, installer CD), ext4, vfat (seed on a FAT disk)
    "isofs",
    "crc32c_generic",  # ext4 needs a crc32c implementation; only a soft dependency
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    # ACPI power button -> input event -> busybox acpid
    "button",
    "evdev",
]

DISK_MIB = 20  # 20 cylinders x 64 heads x 32 sectors x 512 bytes
DIRS = ("bin", "dev", "etc", "lib/modules", "mnt", "proc", "root", "run", "sys", "tmp", "var/log", "var/run")


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def norm(name: str) -> str:
    return name.replace("-", "_")


def module_name(path: Path) -> str:
    return norm(path.name.split(".ko")[0])


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if not path.name.endswith(".ko"):
        raise SystemExit(f"unsupported module compression: {path}")
    return data


def depends(data: bytes) -> list[str]:
    found = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    return [norm(d.decode()) for d in found.group(1).split(b",") if d] if found else []


def resolve_modules(moddir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """The wanted modules and their dependencies, dependencies first; built-in ones skipped."""
    index = {module_name(p): p for p in moddir.rglob("*.ko*")}
    builtin = {module_name(Path(line.strip())) for line in (moddir / "modules.builtin").read_text().splitlines()}
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise SystemExit(f"kernel module {name} is neither built in nor in {moddir}")
        data = read_module(index[name])
        for dep in depends(data):
            visit(dep)
        ordered.append((name, data))

    for name in wanted:
        visit(norm(name))
    return ordered


def build_initrd(root: Path, busybox: Path, init: Path, modules: list[tuple[str, bytes]], out: Path) -> None:
    root.chmod(0o755)
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    shutil.copy(init, root / "init")
    (root / "init").chmod(0o755)
    for name, data in modules:
        (root / f"lib/modules/{name}.ko").write_bytes(data)
    (root / "etc/modules.load").write_text("".join(f"{name}.ko\n" for name, _ in modules))
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = "".join(f"{n}\n" for n in [".", *names]).encode()
    with out.open("wb") as fh:
        cpio = subprocess.Popen(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        gzip = subprocess.Popen(["gzip", "-9", "-n"], stdin=cpio.stdout, stdout=fh)
        if cpio.stdin is None or cpio.stdout is None:  # for the type checker
            raise RuntimeError("no pipes")
        cpio.stdout.close()
        cpio.stdin.write(listing)
        cpio.stdin.close()
        if cpio.wait() or gzip.wait():
            raise SystemExit("cpio | gzip failed")


def build_disk(out: Path, syslinux_cfg: Path) -> None:
    """Partition-less FAT disk ("superfloppy") with syslinux: no loop mount, no root."""
    raw = out / "tiny.raw"
    raw.unlink(missing_ok=True)
    with raw.open("wb") as fh:
        fh.truncate(DISK_MIB * 1024 * 1024)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    # busybox mkdosfs output is rejected by syslinux; mformat's is fine.
    run("mformat", "-i", raw, "-t", str(DISK_MIB), "-h", "64", "-s", "32", "-v", "LABCLOUD", "::", env=env)
    run("syslinux", "--install", raw)
    run("mcopy", "-i", raw, out / "vmlinuz", out / "initrd.gz", "::/", env=env)
    run("mcopy", "-i", raw, syslinux_cfg, "::/syslinux.cfg", env=env)
    tmp = out / "tiny.qcow2.tmp"
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp)
    tmp.replace(out / "tiny.qcow2")


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel-root", type=Path, required=True, help="extracted linux-image-*-amd64 package")
    ap.add_argument("--busybox", type=Path, required=True, help="static busybox binary")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--init", type=Path, default=here / "init")
    ap.add_argument("--syslinux-cfg", type=Path, default=here / "syslinux.cfg")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    kernels = sorted(args.kernel_root.glob("boot/vmlinuz-*"))
    if len(kernels) != 1:
        raise SystemExit(f"expected one boot/vmlinuz-* in {args.kernel_root}, found {len(kernels)}")
    kver = kernels[0].name.removeprefix("vmlinuz-")
    modules = resolve_modules(args.kernel_root / "lib/modules" / kver, MODULES)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(kernels[0], args.out / "vmlinuz")
    with tempfile.TemporaryDirectory(prefix="initrd.", dir=args.out) as tmp:
        build_initrd(Path(tmp), args.busybox, args.init, modules, args.out / "initrd.gz")
    (args.out / "modules.txt").write_text(f"kernel {kver}\n" + "".join(f"{name}\n" for name, _ in modules))
    t1 = time.monotonic()
    build_disk(args.out, args.syslinux_cfg)
    t2 = time.monotonic()

    print(f"kernel {kver}, {len(modules)} modules: {' '.join(name for name, _ in modules)}")
    for name in ("vmlinuz", "initrd.gz", "tiny.qcow2"):
        print(f"{name}: {(args.out / name).stat().st_size / 1e6:.1f} MB")
    print(f"initramfs {t1 - t0:.1f} s, disk {t2 - t1:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
