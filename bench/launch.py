"""Benchmark: launching instances through the portal vs. the same work done directly with libvirt-python.

    .venv/bin/python bench/launch.py [--rounds 5] [--count 20] [--ram 96]

(a) one instance, create → running: the portal's launch (quota reservation, placement, operation,
    the task: overlay, NoCloud seed, define, start) vs. overlay + define + start with libvirt-python;
    the median of ``--rounds`` launches each.
(b) ``--count`` instances of ``--ram`` MiB launched as one batch from one image until libvirt reports
    all of them running, vs. the same overlays + defines + starts done directly.

Both sides start from the image already cached in the host's pool (the first copy is a one-off)
and run their steps one after another in this process (the portal's Celery tasks run eagerly,
in-process, exactly as the worker would run them). Runs on the real qemu:///system under TCG with a
private transient pool; every domain and volume is named ``lcbench-…`` and removed at the end.
Prints the times and the ratios (goal ≤ 1.10); nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup()

import libvirt  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from portal.backends.base import DiskSpec, InstanceSpec  # noqa: E402
from portal.backends.libvirt.connection import connect  # noqa: E402
from portal.backends.libvirt.domain import build_domain_xml  # noqa: E402
from portal.backends.libvirt.storage import overlay_xml  # noqa: E402

URI = "qemu:///system"
GIB = 1024**3


def wait_running(conn: libvirt.virConnect, uuids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pending = set(uuids)
    while pending:
        for u in list(pending):
            if conn.lookupByUUIDString(u).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                pending.discard(u)
        if pending:
            if time.monotonic() > deadline:
                raise SystemExit(f"not running after {timeout} s: {sorted(pending)}")
            time.sleep(0.005)


class Bench:
    def __init__(self, ram: int) -> None:
        self.ram = ram
        self.token = secrets.token_hex(3)
        self.prefix = f"lcbench-{self.token}-"
        self.work = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/var/tmp"))
        self.work.chmod(0o755)
        (self.work / "pool").mkdir(mode=0o755)
        self.conn = connect(URI)
        el = ET.Element("pool", type="dir")
        ET.SubElement(el, "name").text = f"{self.prefix}pool"
        ET.SubElement(ET.SubElement(el, "target"), "path").text = str(self.work / "pool")
        self.pool = self.conn.storagePoolCreateXML(ET.tostring(el, encoding="unicode"), 0)
        settings.LABCLOUD_DOMAIN_PREFIX = self.prefix
        settings.LABCLOUD_SERIAL_LOG_DIR = str(self.work)
        settings.LABCLOUD_IMAGE_STORE = self.work / "images"
        settings.LABCLOUD_IMAGE_STORE.mkdir()

    def setup_portal(self):
        from django.contrib.auth import get_user_model

        from images.models import Image
        from portal.backends.libvirt.driver import LibvirtDriver
        from portal.celery import app as celery_app
        from portal.models import QUOTA_RESOURCES, Membership, Quota, Tenant
        from vms.compute.libvirt.images import ensure_image_on_host
        from vms.models import Flavor, Host

        celery_app.conf.task_always_eager = True
        cap = LibvirtDriver(URI).capacity(self.pool.name())
        self.host = Host.objects.create(
            name="bench",
            uri=URI,
            storage_pool=self.pool.name(),
            virt_type="qemu",
            state="up",
            cpus=cap.cpus,
            memory_mib=cap.memory_mib,
            reserved_ram_mib=0,
            cpu_allocation_ratio=64,
            ram_allocation_ratio=4,
            free_memory_mib=cap.free_memory_mib,
            pool_capacity=cap.pool_capacity,
            pool_available=cap.pool_available,
        )
        self.tenant = Tenant.objects.create(name="bench", slug="bench")
        # every limit unlimited, whatever quotas exist now (a new quota field must not break the bench)
        Quota.objects.update_or_create(tenant=self.tenant, defaults=dict.fromkeys(QUOTA_RESOURCES, -1))
        self.user = get_user_model().objects.create_user("bench-user")
        Membership.objects.create(user=self.user, tenant=self.tenant, role="member")
        self.flavor = Flavor.objects.create(name="bench", vcpus=1, ram_mib=self.ram, disk_gib=1)
        source = Path(settings.BASE_DIR) / "var" / "test-media" / "tiny.qcow2"
        self.image = Image.objects.create(
            tenant=self.tenant,
            name="tiny",
            kind="disk",
            disk_format="qcow2",
            stored_format="qcow2",
            status=Image.Status.ACTIVE,
            size=source.stat().st_size,
            virtual_size=20 * 1024**2,
        )
        shutil.copyfile(source, self.image.path)
        self.replica = ensure_image_on_host(image=self.image, host=self.host)
        self.base_path = self.pool.storageVolLookupByName(self.replica.volume).path()
        # One seed volume shared by the direct launches (the portal builds one per instance).
        from portal.backends.cloudinit import build_nocloud_seed
        from portal.backends.libvirt.storage import upload_bytes

        self.seed = f"{self.prefix}direct-seed.iso"
        upload_bytes(
            URI, pool_name=self.pool.name(), name=self.seed, data=build_nocloud_seed(instance_id="d", hostname="d")
        )

    # ---------------------------------------------------------------- the portal

    def portal(self, count: int) -> float:
        from vms import lifecycle
        from vms.models import Instance

        t0 = time.perf_counter()
        launch = lifecycle.launch_instances(
            actor=self.user,
            tenant=self.tenant,
            name=f"p{uuid.uuid4().hex[:6]}",
            flavor=self.flavor,
            image=self.image,
            count=count,
        )
        wait_running(self.conn, [str(i.uuid) for i in launch.instances])
        took = time.perf_counter() - t0
        states = set(Instance.objects.filter(pk__in=[i.pk for i in launch.instances]).values_list("state", flat=True))
        assert states == {"running"}, states
        for instance in launch.instances:
            lifecycle.delete_instance(actor=self.user, instance=instance)
        return took

    # ---------------------------------------------------------------- libvirt-python directly

    def direct(self, count: int) -> float:
        t0 = time.perf_counter()
        made = []
        for _ in range(count):
            u = str(uuid.uuid4())
            name = f"{self.prefix}d-{u}"
            self.pool.createXML(
                overlay_xml(name=f"{name}.qcow2", capacity=GIB, backing_path=self.base_path, backing_format="qcow2"), 0
            )
            # The same devices as the portal's domain: disk, seed CD-ROM, serial log, VNC with a password.
            spec = InstanceSpec(
                uuid=u,
                name=name,
                title=name,
                vcpus=1,
                memory_mib=self.ram,
                virt_type="qemu",
                vnc_password=secrets.token_urlsafe(6)[:8],
                serial_log=str(self.work / f"{name}.serial.log"),
                disks=(
                    DiskSpec(
                        device="disk", pool=self.pool.name(), volume=f"{name}.qcow2", format="qcow2", boot_order=1
                    ),
                    DiskSpec(device="cdrom", pool=self.pool.name(), volume=self.seed, format="raw", readonly=True),
                ),
            )
            dom = self.conn.defineXML(build_domain_xml(spec))
            dom.create()
            made.append((u, name))
        wait_running(self.conn, [u for u, _ in made])
        took = time.perf_counter() - t0
        for u, name in made:
            dom = self.conn.lookupByUUIDString(u)
            dom.destroy()
            dom.undefine()
            self.pool.storageVolLookupByName(f"{name}.qcow2").delete(0)
        return took

    def cleanup(self) -> None:
        from portal.testing import undefine_nwfilters

        for dom in self.conn.listAllDomains(0):
            if dom.name().startswith(self.prefix):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
        undefine_nwfilters(self.conn, self.prefix)  # the instances' port filters and their groups' filters
        with contextlib.suppress(libvirt.libvirtError):
            for vol in self.pool.listAllVolumes(0):
                vol.delete(0)
            self.pool.destroy()
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--ram", type=int, default=96)
    args = parser.parse_args()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    bench = Bench(args.ram)
    try:
        bench.setup_portal()
        bench.portal(1)  # warm-up: imports, connections, first pycdlib use
        bench.direct(1)
        portal_one, direct_one = [], []
        for _ in range(args.rounds):  # interleaved, so both see the same machine load
            direct_one.append(bench.direct(1))
            portal_one.append(bench.portal(1))
        p, d = statistics.median(portal_one), statistics.median(direct_one)
        print(f"database: {connection.vendor}, TCG, {args.ram} MiB guests, image cached on the host")
        print(
            f"(a) one instance create→running: portal {p * 1000:.0f} ms, libvirt-python {d * 1000:.0f} ms, "
            f"ratio {p / d:.2f} (median of {args.rounds})"
        )
        # A-B-B-A order cancels the drift of a machine that warms up or fills up during the run.
        d_batch, p_batch = [bench.direct(args.count)], [bench.portal(args.count)]
        p_batch.append(bench.portal(args.count))
        d_batch.append(bench.direct(args.count))
        pb, db = statistics.mean(p_batch), statistics.mean(d_batch)
        print(
            f"(b) batch of {args.count}: portal {pb:.2f} s ({', '.join(f'{t:.1f}' for t in p_batch)}), "
            f"libvirt-python {db:.2f} s ({', '.join(f'{t:.1f}' for t in d_batch)}), ratio {pb / db:.2f}"
        )
    finally:
        bench.cleanup()
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
