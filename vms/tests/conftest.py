"""Fixtures for the libvirt driver tests.

- ``test_driver``: the driver on libvirt's in-memory ``test:///default`` (fast; its state lives in
  this process and is shared by every connection, so the fixture removes every ``lctest-`` domain
  and volume it left behind).
- ``lctest_host``: the driver on the real ``qemu:///system`` with a private transient dir pool
  (``lctest-pool-…`` in a 0755 folder under /var/tmp, so QEMU and virtlogd can use it whatever
  user they run as) and a tracker; on teardown, also after failures, it destroys and undefines
  every domain it was told about or whose name starts with its own prefix, deletes the volumes
  and the pool, and removes the folder.
- ``guest_media``: the tiny test guests (from images/tests/conftest.py).

Tests that boot real guests are marked ``libvirt_guests``; they do not depend on the database, so
the PostgreSQL pass of scripts/test.sh deselects them (they already ran in the SQLite pass).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import tempfile
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from images.tests.conftest import guest_media  # noqa: F401 - re-exported fixture
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.driver import LibvirtDriver
from portal.testing import undefine_nwfilters

PREFIX = "lctest-"
QEMU_URI = "qemu:///system"
TEST_URI = "test:///default"


def pytest_configure(config):
    config.addinivalue_line("markers", "libvirt_guests: boots real guests on qemu:///system under TCG (slow)")


def pytest_collection_modifyitems(config, items):
    from django.conf import settings

    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    selected, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("libvirt_guests") else selected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def fake_ssh_key(comment: str) -> str:
    """A well-formed (but unused) ed25519 public key line."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + secrets.token_bytes(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def _remove_domain(conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isPersistent():
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            if dom.snapshotNum(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            dom.undefineFlags(flags)


@pytest.fixture
def test_driver():
    driver = LibvirtDriver(TEST_URI)
    yield driver
    conn = connect(TEST_URI)
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(PREFIX):
            _remove_domain(conn, dom)
    for pool in conn.listAllStoragePools(0):
        with contextlib.suppress(libvirt.libvirtError):
            for vol in pool.listAllVolumes(0):
                if vol.name().startswith(PREFIX):
                    vol.delete(0)


@dataclass
class LcTestHost:
    """The real host of one test: driver, private pool and work folder, and what to clean up."""

    driver: LibvirtDriver
    pool: str
    work: Path
    prefix: str
    uuids: list[str] = field(default_factory=list)

    def name(self, what: str) -> str:
        return f"{self.prefix}{what}"

    def track(self, uuid: str) -> str:
        self.uuids.append(uuid)
        return uuid


@pytest.fixture
def lctest_host():
    conn = connect(QEMU_URI)
    token = secrets.token_hex(3)
    # The anti-spoofing filter its guests' NICs get carries the test's prefix too (as with portal_host's
    # LABCLOUD_DOMAIN_PREFIX): removed below once no domain uses it.
    driver = LibvirtDriver(QEMU_URI, nic_filter=f"{PREFIX}{token}-clean-traffic")
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{token}-", dir="/var/tmp"))
    work.chmod(0o755)
    (work / "pool").mkdir(mode=0o755)
    pool_name = f"{PREFIX}pool-{token}"
    pool_el = ET.Element("pool", type="dir")
    ET.SubElement(pool_el, "name").text = pool_name
    ET.SubElement(ET.SubElement(pool_el, "target"), "path").text = str(work / "pool")
    pool = conn.storagePoolCreateXML(ET.tostring(pool_el, encoding="unicode"), 0)  # transient
    host = LcTestHost(driver=driver, pool=pool_name, work=work, prefix=f"{PREFIX}{token}-")
    try:
        yield host
    finally:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.UUIDString() in host.uuids or dom.name().startswith(host.prefix):
                    _remove_domain(conn, dom)
        with contextlib.suppress(libvirt.libvirtError):
            for vol in pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            undefine_nwfilters(conn, host.prefix)
        shutil.rmtree(work, ignore_errors=True)


def leftovers(conn: libvirt.virConnect, prefix: str) -> list[str]:
    """Names of domains, pools and volumes starting with ``prefix`` (should be none after a test; the
    test's network filter, which its NICs used, is removed by ``lctest_host`` afterwards)."""
    found = [f"domain {d.name()}" for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    for pool in conn.listAllStoragePools(0):
        if pool.name().startswith(prefix):
            found.append(f"pool {pool.name()}")
        with contextlib.suppress(libvirt.libvirtError):
            found += [f"volume {v.name()}" for v in pool.listAllVolumes(0) if v.name().startswith(prefix)]
    return found


@pytest.fixture
def portal_host(lctest_host, settings, tmp_path):
    """A Host row for the real ``qemu:///system`` with the test's private pool, capacity filled in.

    Domains and volumes the portal creates are named with the test's own ``lctest-…`` prefix
    (``LABCLOUD_DOMAIN_PREFIX``), so ``lctest_host`` removes them even when the test fails; serial
    logs go to the test's work folder; images are stored in a temporary folder.
    """
    from vms.models import Host

    settings.LABCLOUD_DOMAIN_PREFIX = lctest_host.prefix
    settings.LABCLOUD_SERIAL_LOG_DIR = str(lctest_host.work)
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "images"
    settings.LABCLOUD_IMAGE_STORE.mkdir()
    capacity = lctest_host.driver.capacity(lctest_host.pool)
    host = Host.objects.create(
        name=lctest_host.name("host"),
        uri=QEMU_URI,
        storage_pool=lctest_host.pool,
        virt_type=Host.VirtType.QEMU,
        state=Host.State.UP,
        cpus=capacity.cpus,
        memory_mib=capacity.memory_mib,
        free_memory_mib=capacity.free_memory_mib,
        pool_capacity=capacity.pool_capacity,
        pool_available=capacity.pool_available,
    )
    host.lctest = lctest_host
    return host


@contextlib.contextmanager
def watcher_running(watcher, *, name: str = "lctest-watcher", join_timeout: float = 10.0):
    """``watcher.run()`` in a thread (with its own database connections) for the ``with`` block; then it is
    stopped and joined, and must have ended within ``join_timeout`` seconds."""
    from django.db import connections

    def run():
        try:
            watcher.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        watcher.stop()
        thread.join(timeout=join_timeout)
    assert not thread.is_alive()


def active_image(*, tenant, source: Path, name: str, kind: str = "disk", disk_format: str = "qcow2", **fields):
    """An active image row whose stored file is a copy of ``source`` (the pipeline itself is tested in images/)."""
    from images.models import Image

    image = Image.objects.create(
        tenant=tenant,
        name=name,
        kind=kind,
        disk_format=disk_format,
        stored_format=disk_format,
        status=Image.Status.ACTIVE,
        size=source.stat().st_size,
        **fields,
    )
    image.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, image.path)
    return image


@pytest.fixture
def lctest_network(lctest_host):
    """A shared isolated Network row (no <forward>, DNS off) named lctest-…; its libvirt network is removed after."""
    from portal.backends.libvirt.network import delete_network
    from vms.models import Network

    conn = connect(QEMU_URI)
    used = set()
    for net in conn.listAllNetworks(0):
        with contextlib.suppress(libvirt.libvirtError):
            used |= {ip.get("address", "") for ip in ET.fromstring(net.XMLDesc(0)).iter("ip")}  # noqa: S314
    third = next(n for n in range(100, 250) if f"10.254.{n}.1" not in used)
    name = lctest_host.name("net")[:50]
    network = Network.objects.create(
        name=name, libvirt_name=name, mode=Network.Mode.ISOLATED, cidr=f"10.254.{third}.0/24", is_public=True
    )
    try:
        yield network
    finally:
        with contextlib.suppress(Exception):
            delete_network(QEMU_URI, name)


@pytest.fixture
def run_tasks(django_capture_on_commit_callbacks, settings):
    """Call a service; its on-commit Celery task runs here, in-process; returns the operation, refreshed."""
    from portal.celery import app as celery_app

    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True

    def run(call):
        with django_capture_on_commit_callbacks(execute=True):
            result = call()
        from vms.models import Operation

        if isinstance(result, Operation):
            result.refresh_from_db()
        return result

    yield run
    celery_app.conf.task_always_eager = previous
