"""``qemu.measure_alone`` on real qcow2 files (qemu-img, qemu-io): what a volume's snapshots keep is the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

from images import qemu

MIB = 1024**2


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_what_snapshots_keep_is_the_allocation_beyond_the_volume_alone(tmp_path):
    base = tmp_path / "base.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(base), "256M")
    run("qemu-io", "-c", "write -P 1 0 48M", str(base))  # the image: a backing file the volume does not hold
    disk = tmp_path / "disk.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", "-b", str(base), "-F", "qcow2", str(disk))
    run("qemu-io", "-c", "write -P 2 64M 16M", str(disk))
    alone = qemu.measure_alone(disk)
    assert 16 * MIB <= alone < 17 * MIB  # its own 16 MiB and metadata; the backing file's 48 MiB are not its own
    assert allocated(disk) <= alone  # no snapshot: nothing held beyond it

    run("qemu-img", "snapshot", "-c", "s1", str(disk))
    run("qemu-io", "-c", "write -P 3 64M 16M", str(disk))  # the snapshot alone keeps the old 16 MiB now
    assert abs(qemu.measure_alone(disk) - alone) < MIB
    held = allocated(disk) - qemu.measure_alone(disk)
    assert 15 * MIB < held < 17 * MIB

    run("qemu-img", "snapshot", "-d", "s1", str(disk))  # the freed clusters go back to the file system
    assert allocated(disk) - qemu.measure_alone(disk) < MIB
