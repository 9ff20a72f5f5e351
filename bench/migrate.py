"""Benchmark: live migration through the portal vs. the same migration with libvirt-python, same guest, same run.

    .venv/bin/python bench/migrate.py [--rounds 3] [--mode copy|shared|both]

Needs root, the system libvirtd and the tests' second host (``scripts/second_host/up.sh``; started here
when it is down, and stopped again at the end). One tiny TCG guest (128 MiB) is launched through the
portal's API on the system host, then moved back and forth between the two hosts, interleaved
A-B-B-A per round:

(A) the portal: ``POST /api/v1/instances/{id}/migrate/`` to a real ``manage.py serve`` (web, worker,
    watcher) on 127.0.0.1 with a Redis of its own, until ``GET /api/v1/operations/{id}/`` says
    ``succeeded`` (polled every 10 ms): what a cloud admin waits for. Downtime: the operation's
    ``result.downtime_ms`` (libvirt's completed-job statistics on the destination).
(B) libvirt-python doing the same work: (copy mode) the overlay created on the destination over its
    copy of the image and the seed copied through storage streams, then ``virDomainMigrateToURI3``
    with the portal's flags plus ``PEER2PEER`` (the API needs it for QEMU) and the same XML, then the
    source's volumes deleted; (shared mode) only the migration. Downtime from the same statistics.
    While B runs the instance row is marked as being migrated so the portal's watcher leaves it alone.

Modes: ``copy`` (the hosts' own pools; the overlay's blocks are mirrored) and ``shared`` (a pool on the
second daemon over the system host's pool directory: ``storage_share`` set on both, nothing copied).
Prints each run, the medians and the ratios portal/raw (goal ≤ 1.10); nothing is asserted. Every
domain and volume is named ``lcbench-…`` and removed at the end, with the image copies it made.
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
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="lcbench-", dir="/var/tmp"))
WORK.chmod(0o755)
PREFIX = f"lcbench-{secrets.token_hex(3)}-"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ["DATABASE_URL"] = f"sqlite:///{WORK / 'bench.sqlite3'}"
os.environ["LABCLOUD_DOMAIN_PREFIX"] = PREFIX
os.environ["LABCLOUD_SERIAL_LOG_DIR"] = str(WORK)
os.environ["LABCLOUD_IMAGE_STORE"] = str(WORK / "images")

import django  # noqa: E402

django.setup()

import libvirt  # noqa: E402
from django.core.management import call_command  # noqa: E402

from portal.backends.libvirt.connection import connect  # noqa: E402
from portal.backends.libvirt.migration import DiskMove, MigrationPlan, rewrite_domain_xml  # noqa: E402
from portal.backends.libvirt.storage import overlay_xml  # noqa: E402
from portal.testing import OwnRedis  # noqa: E402
from portal.testing_second_host import read_info, remove_named, run_script, status  # noqa: E402
from vms.tests.faults import Api, Portal  # noqa: E402

SYSTEM = "qemu:///system"
MIB = 1024**2


def transient_pool(conn: libvirt.virConnect, name: str, path: Path) -> libvirt.virStoragePool:
    el = ET.Element("pool", type="dir")
    ET.SubElement(el, "name").text = name
    ET.SubElement(ET.SubElement(el, "target"), "path").text = str(path)
    return conn.storagePoolCreateXML(ET.tostring(el, encoding="unicode"), 0)


def wait_operation(api: Api, operation_id: int, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = api.operation(operation_id)
        if body["state"] in ("succeeded", "failed"):
            if body["state"] != "succeeded":
                raise SystemExit(f"operation {operation_id} failed: {body['error']} / {body['error_detail']}")
            return body
        if time.monotonic() > deadline:
            raise SystemExit(f"operation {operation_id} not finished after {timeout} s")
        time.sleep(0.01)


class Bench:
    def __init__(self, mode: str) -> None:
        from django.contrib.auth import get_user_model

        from images.models import Image
        from portal.backends.libvirt.driver import LibvirtDriver
        from portal.models import Membership, Quota, Tenant
        from portal.services import create_api_token
        from vms.models import Flavor, Host

        self.mode = mode
        self.second = read_info()
        self.sys_conn = connect(SYSTEM)
        self.sec_conn = connect(self.second.tcp_uri)
        pool_dir = WORK / f"pool-{mode}"
        pool_dir.mkdir(mode=0o755)
        self.sys_pool = transient_pool(self.sys_conn, f"{PREFIX}{mode}-pool", pool_dir)
        if mode == "shared":
            self.sec_pool = transient_pool(self.sec_conn, f"{PREFIX}shared", pool_dir)
        else:
            self.sec_pool = self.sec_conn.storagePoolLookupByName(self.second.pool)
        share = "lcbench" if mode == "shared" else ""
        self.hosts = {}
        for name, uri, pool in (
            ("system", SYSTEM, self.sys_pool.name()),
            ("second", self.second.ssh_uri, self.sec_pool.name()),
        ):
            cap = LibvirtDriver(uri).capacity(pool)
            self.hosts[name] = Host.objects.create(
                name=f"{PREFIX}{mode}-{name}",
                uri=uri,
                storage_pool=pool,
                storage_share=share,
                migration_address="127.0.0.1",
                virt_type="qemu",
                state="up",
                enabled=name == "system",  # the launch lands on the system host
                cpus=cap.cpus,
                memory_mib=cap.memory_mib,
                free_memory_mib=cap.free_memory_mib,
                pool_capacity=cap.pool_capacity,
                pool_available=cap.pool_available,
                cpu_allocation_ratio=16,
                ram_allocation_ratio=2,
            )
        tenant = Tenant.objects.create(name=f"bench-{mode}", slug=f"bench-{mode}")
        limits = {f.name: -1 for f in Quota._meta.concrete_fields if f.get_internal_type().endswith("IntegerField")}
        Quota.objects.create(tenant=tenant, **{k: v for k, v in limits.items() if k not in ("id", "tenant")})
        admin = get_user_model().objects.create_user(f"bench-admin-{mode}", is_staff=True, is_superuser=True)
        Membership.objects.create(user=admin, tenant=tenant, role="admin")
        flavor = Flavor.objects.create(name=f"bench-{mode}", vcpus=1, ram_mib=128, disk_gib=1)
        source = ROOT / "var" / "test-media" / "tiny.qcow2"
        image = Image.objects.create(
            tenant=tenant,
            name="tiny",
            kind="disk",
            disk_format="qcow2",
            stored_format="qcow2",
            status=Image.Status.ACTIVE,
            size=source.stat().st_size,
            virtual_size=20 * MIB,
        )
        image.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, image.path)
        self.image = image
        _token, raw = create_api_token(user=admin, name="bench", scope="write")
        self.redis = OwnRedis(WORK / "redis.log")
        self.redis.start()
        self.portal = Portal(tmp_path=WORK, redis=self.redis, database_url=os.environ["DATABASE_URL"])
        self.portal.start()
        self.api = Api(self.portal.url, raw)
        reply = self.api.post(
            "/api/v1/instances/", {"tenant": tenant.pk, "name": "mover", "flavor": flavor.pk, "image": image.pk}
        )
        assert reply.status == 202, reply.body
        wait_operation(self.api, reply.body["operations"][0]["id"])
        self.instance_id = reply.body["instances"][0]["id"]
        Host.objects.filter(pk=self.hosts["second"].pk).update(enabled=True)
        from vms.hosts import check_host

        self.hosts["second"] = check_host(host=Host.objects.get(pk=self.hosts["second"].pk))  # up, not disabled
        from vms.models import Instance

        self.instance = Instance.objects.get(pk=self.instance_id)
        self.uuid = str(self.instance.uuid)

    def where(self) -> str:
        from vms.models import Instance

        host_id = Instance.objects.filter(pk=self.instance_id).values_list("host_id", flat=True).get()
        return next(name for name, host in self.hosts.items() if host.pk == host_id)

    @staticmethod
    def other(name: str) -> str:
        return "second" if name == "system" else "system"

    # ---------------------------------------------------------------- (A) the portal

    def portal_run(self) -> tuple[float, int | None]:
        to = self.hosts[self.other(self.where())]
        t0 = time.perf_counter()
        reply = self.api.post(f"/api/v1/instances/{self.instance_id}/migrate/", {"host": to.pk})
        assert reply.status == 202, reply.body
        body = wait_operation(self.api, reply.body["id"])
        return time.perf_counter() - t0, (body["result"] or {}).get("downtime_ms")

    # ---------------------------------------------------------------- (B) libvirt-python

    def raw_run(self) -> tuple[float, int | None]:
        from vms.models import Instance

        here = self.where()
        there = self.other(here)
        src_conn, dst_conn = (self.sys_conn, self.sec_conn) if here == "system" else (self.sec_conn, self.sys_conn)
        src_pool, dst_pool = (self.sys_pool, self.sec_pool) if here == "system" else (self.sec_pool, self.sys_pool)
        # the destination as seen from the source daemon (peer-to-peer)
        dconnuri = (
            self.second.tcp_uri
            if there == "second"
            else f"qemu+unix:///system?socket={self.second.directory}/system-run/libvirt-sock"
        )
        Instance.objects.filter(pk=self.instance_id).update(task="migrate")  # the watcher leaves it alone
        try:
            t0 = time.perf_counter()
            dom = src_conn.lookupByUUIDString(self.uuid)
            disks = []
            # the persistent definition names the volumes (after a live arrival the live one has file paths)
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))  # noqa: S314 - libvirt's own XML
            copy = self.mode == "copy"
            for disk in root.findall("devices/disk"):
                source, target = disk.find("source"), disk.find("target")
                if source is None or source.get("volume") is None:
                    continue
                name = source.get("volume")
                writable = disk.get("device") == "disk"
                if copy:
                    src_vol = src_pool.storageVolLookupByName(name)
                    if writable:
                        base = f"labcloud-image-{self.image.uuid}.qcow2"
                        dst_pool.createXML(
                            overlay_xml(
                                name=name,
                                capacity=src_vol.info()[1],
                                backing_path=dst_pool.storageVolLookupByName(base).path(),
                                backing_format="qcow2",
                            ),
                            0,
                        )
                    else:  # the seed: copied through the streams
                        data = bytearray()
                        stream = src_conn.newStream(0)
                        src_vol.download(stream, 0, 0, 0)
                        stream.recvAll(lambda _s, chunk, buf: buf.extend(chunk) or len(chunk), data)
                        stream.finish()
                        el = ET.Element("volume")
                        ET.SubElement(el, "name").text = name
                        ET.SubElement(el, "capacity").text = str(len(data))
                        vol = dst_pool.createXML(ET.tostring(el, encoding="unicode"), 0)
                        up = dst_conn.newStream(0)
                        vol.upload(up, 0, len(data), 0)
                        up.send(bytes(data))
                        up.finish()
                else:
                    dst_pool.refresh(0)
                path = dst_pool.storageVolLookupByName(name).path()
                disks.append(
                    DiskMove(
                        target=target.get("dev"),
                        path=path,
                        pool=dst_pool.name(),
                        volume=name,
                        copy=copy and writable,
                    )
                )
            plan = MigrationPlan(
                uuid=self.uuid,
                source_uri="",
                destination_uri="",
                disks=tuple(disks),
                live=True,
                shared_storage=not copy,
                address="127.0.0.1",
                vnc_listen="127.0.0.1",
            )
            flags = (
                libvirt.VIR_MIGRATE_LIVE
                | libvirt.VIR_MIGRATE_PEER2PEER
                | libvirt.VIR_MIGRATE_PERSIST_DEST
                | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                | libvirt.VIR_MIGRATE_AUTO_CONVERGE
                | (libvirt.VIR_MIGRATE_NON_SHARED_INC if copy else libvirt.VIR_MIGRATE_UNSAFE)
            )
            inactive = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
            params = {
                libvirt.VIR_MIGRATE_PARAM_DEST_XML: rewrite_domain_xml(
                    dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), plan, persistent=False
                ),
                libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: rewrite_domain_xml(dom.XMLDesc(inactive), plan, persistent=True),
                libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1",
                libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1",
            }
            if copy:
                params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [d.target for d in disks if d.copy]
            dom.migrateToURI3(dconnuri, params, flags)
            if copy:
                for d in disks:
                    src_pool.storageVolLookupByName(d.volume).delete(0)
            took = time.perf_counter() - t0
            downtime = None
            with contextlib.suppress(libvirt.libvirtError):
                stats = dst_conn.lookupByUUIDString(self.uuid).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                downtime = stats.get("downtime")
        finally:
            Instance.objects.filter(pk=self.instance_id).update(task="", host=self.hosts[there])
        return took, downtime

    def close(self) -> None:
        from images.models import ImageReplica
        from vms.models import Host

        self.portal.stop()
        # the next mode's launch must not land on this mode's hosts (same database)
        Host.objects.filter(pk__in=[h.pk for h in self.hosts.values()]).update(enabled=False)
        self.redis.stop()
        remove_named(SYSTEM, PREFIX)
        remove_named(self.second.tcp_uri, PREFIX)
        for replica in ImageReplica.objects.filter(host=self.hosts["second"]):
            with contextlib.suppress(libvirt.libvirtError):
                self.sec_conn.storagePoolLookupByName(replica.pool).storageVolLookupByName(replica.volume).delete(0)
        for pool in (self.sys_pool, self.sec_pool if self.mode == "shared" else None):
            if pool is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    for vol in pool.listAllVolumes(0):
                        vol.delete(0)
                with contextlib.suppress(libvirt.libvirtError):
                    pool.destroy()


def run(mode: str, rounds: int) -> None:
    call_command("migrate", verbosity=0)
    bench = Bench(mode)
    try:
        bench.portal_run()  # warm-up: the image's first copy to the second host is a one-off
        bench.raw_run()
        portal, raw = [], []
        for _ in range(rounds):
            for side in ("A", "B", "B", "A"):
                took, downtime = bench.portal_run() if side == "A" else bench.raw_run()
                (portal if side == "A" else raw).append((took, downtime))
                who = "portal" if side == "A" else "raw   "
                print(f"  {mode:6} {who} {took * 1000:8.0f} ms  downtime {downtime} ms")
        p = statistics.median(t for t, _ in portal)
        r = statistics.median(t for t, _ in raw)
        pd = statistics.median(d for _, d in portal if d is not None)
        rd = statistics.median(d for _, d in raw if d is not None)
        print(
            f"{mode}: portal median {p * 1000:.0f} ms (downtime {pd:.0f} ms), libvirt-python median "
            f"{r * 1000:.0f} ms (downtime {rd:.0f} ms); ratio {p / r:.2f} (goal <= 1.10)"
        )
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=["copy", "shared", "both"], default="both")
    args = parser.parse_args()
    started = status() != "up"
    if started:
        run_script("up.sh")
    try:
        for mode in ("copy", "shared") if args.mode == "both" else (args.mode,):
            run(mode, args.rounds)
    finally:
        if started:
            run_script("down.sh")
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
