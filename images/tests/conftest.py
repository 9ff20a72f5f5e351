"""Fixtures for image tests: a private image store, Celery run in-process, real test files built with qemu-img."""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from portal.celery import app as celery_app


def pytest_configure(config):
    # Also registered by vms/tests/conftest.py; here for runs of the image tests alone.
    config.addinivalue_line("markers", "libvirt_guests: boots real guests on qemu:///system under TCG (slow)")


@pytest.fixture(autouse=True)
def image_store(tmp_path, settings) -> Path:
    store = tmp_path / "store"
    settings.LABCLOUD_IMAGE_STORE = store
    return store


@pytest.fixture(autouse=True)
def local_mirror_allowed(settings):
    """The tests' HTTP server runs on 127.0.0.1, which imports refuse unless the allow-list names it,
    as a lab does for its own mirror. test_ssrf.py checks the refusal without it."""
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def eager_tasks():
    """Run Celery tasks in-process (Celery's own eager mode); on-commit hooks still decide when they are queued."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Real images in every supported format, plus the hostile ones, built once per run."""
    d = tmp_path_factory.mktemp("media")
    raw = d / "disk.raw"
    # 8 MiB raw disk with recognisable content at a few offsets.
    with open(raw, "wb") as fh:
        fh.truncate(8 * 1024 * 1024)
        for offset in (0, 1024 * 1024, 5 * 1024 * 1024):
            fh.seek(offset)
            fh.write(b"LABCLOUD-TEST-PATTERN" * 100)
    files = {"raw": raw}
    for fmt, ext, qfmt in (
        ("qcow2", "qcow2", "qcow2"),
        ("vmdk", "vmdk", "vmdk"),
        ("vhd", "vhd", "vpc"),
        ("vdi", "vdi", "vdi"),
    ):
        out = d / f"disk.{ext}"
        run("qemu-img", "convert", "-f", "raw", "-O", qfmt, str(raw), str(out))
        files[fmt] = out
    iso_dir = d / "isotree"
    iso_dir.mkdir()
    (iso_dir / "README.TXT").write_text("labcloud test iso\n")
    files["iso"] = d / "test.iso"
    run("xorriso", "-as", "mkisofs", "-quiet", "-V", "LCTEST", "-o", str(files["iso"]), str(iso_dir))

    # Hostile files.
    secret = d / "host-secret.raw"
    secret.write_bytes(b"top secret host data" * 1000)
    files["backing"] = d / "backing.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(files["backing"]), "8M")
    files["datafile"] = d / "datafile.qcow2"
    run(
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={d / 'external.raw'}", str(files["datafile"]), "8M"
    )
    files["huge"] = d / "huge.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(files["huge"]), "1P")
    files["vmdk_descriptor"] = d / "descriptor.vmdk"
    files["vmdk_descriptor"].write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        f'RW 16384 FLAT "{secret}" 0\n\nddb.virtualHWVersion = "4"\n'
    )
    files["truncated"] = d / "truncated.qcow2"
    data = files["qcow2"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2 + 1000])
    return files


def upload(*, actor, image, path: Path, chunk: int = 3 * 1024 * 1024):
    """Send ``path`` through the resumable upload service in chunks, as the API and the browser do."""
    from images.services import receive_chunk

    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        piece = data[offset : offset + chunk]
        image = receive_chunk(actor=actor, image=image, stream=io.BytesIO(piece), offset=offset, length=len(piece))
        offset += len(piece)
    return image


@pytest.fixture
def lctest_pool(tmp_path):
    """A real libvirt dir pool on qemu:///system, named with the test prefix and removed afterwards."""
    import libvirt

    from portal.backends.libvirt.connection import connect

    name = f"lctest-pool-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "pool"
    path.mkdir()
    import xml.etree.ElementTree as ET

    pool_el = ET.Element("pool", type="dir")
    ET.SubElement(pool_el, "name").text = name
    ET.SubElement(ET.SubElement(pool_el, "target"), "path").text = str(path)
    conn = connect("qemu:///system")
    pool = conn.storagePoolCreateXML(ET.tostring(pool_el, encoding="unicode"), 0)
    try:
        yield name
    finally:
        try:
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
            pool.destroy()
        except libvirt.libvirtError:
            pass


@pytest.fixture(scope="session")
def guest_media() -> dict[str, Path]:
    """The tiny bootable guests built by scripts/build_test_media.sh (part of `make test`'s set-up)."""
    from django.conf import settings

    folder = Path(os.environ.get("LABCLOUD_TEST_MEDIA", Path(settings.BASE_DIR) / "var" / "test-media"))
    files = {name: folder / name for name in ("tiny.qcow2", "installer.iso", "grub-rescue-cdrom.iso")}
    missing = [name for name, path in files.items() if not path.exists()]
    if missing:
        pytest.fail(f"test guests missing in {folder}: {missing}; run `make test` or scripts/build_test_media.sh")
    return files
