"""Benchmark: a launch as the user waits for it, through the portal, vs. the same work with libvirt-python.

    .venv/bin/python bench/launch_e2e.py [--rounds 5] [--count 20] [--ram 96]

Needs root and the system libvirtd. Runs a real ``manage.py serve`` (daphne, the Celery workers, the
watcher) on 127.0.0.1 with a SQLite database and a Redis of its own, and a private transient storage
pool on qemu:///system; every domain and volume is named ``lcbench-…`` and removed at the end.

(A) the portal: ``POST /api/v1/instances/`` with an API token, then
    - "socket": until the live socket (``/ws/live/?tenant=…``, signed in as the same member) has
      carried a ``running`` instance event for every instance launched — what the dashboard shows;
    - "api": until ``GET /api/v1/instances/{id}/`` reads ``running`` for every one (polled every
      10 ms in a thread of its own) — what an API client sees.
(B) libvirt-python doing the same work, one instance after another: the overlay over the image in the
    pool, a NoCloud seed ISO built and uploaded, the domain defined (the same XML builder and devices)
    and started, until libvirt reports every domain running.

Single launches and a batch of ``--count`` (one request vs. the same number of direct launches),
interleaved A-B-B-A per round, medians. Both start from the image already in the pool (the first
copy is a one-off). Prints each run, the medians and the ratios (goal <= 1.10); nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import secrets
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
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

from portal.backends.base import DiskSpec, InstanceSpec  # noqa: E402
from portal.backends.cloudinit import build_nocloud_seed  # noqa: E402
from portal.backends.libvirt.connection import connect  # noqa: E402
from portal.backends.libvirt.domain import build_domain_xml  # noqa: E402
from portal.backends.libvirt.storage import overlay_xml, upload_bytes  # noqa: E402
from portal.testing import OwnRedis, undefine_nwfilters  # noqa: E402
from vms.tests.faults import Api, Portal  # noqa: E402

URI = "qemu:///system"
GIB, MIB = 1024**3, 1024**2


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


class Socket:
    """The live socket's text frames as JSON (RFC 6455; server frames are not masked). A thread of its own reads
    the socket all the time and answers daphne's keep-alive pings, as a browser does: between the portal's runs
    the bench does other work for longer than daphne waits for a pong."""

    def __init__(self, port: int, cookie: str, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"websocket refused: {head[:80]!r}")
        self.sock.settimeout(None)
        self.messages: queue.Queue = queue.Queue()
        self.closed: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the live socket was closed by the server")
        self.buffer += chunk

    def _frame(self) -> tuple[int, bytes]:
        """The next whole frame (opcode, payload), reading the socket until it is in the buffer."""
        while True:
            header = 2 + {126: 2, 127: 8}.get(self.buffer[1] & 0x7F, 0) if len(self.buffer) >= 2 else 2
            if len(self.buffer) >= header:
                length = self.buffer[1] & 0x7F
                if header == 4:
                    length = struct.unpack("!H", self.buffer[2:4])[0]
                elif header == 10:
                    length = struct.unpack("!Q", self.buffer[2:10])[0]
                if len(self.buffer) >= header + length:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[header : header + length]
                    self.buffer = self.buffer[header + length :]
                    return opcode, payload
            self._fill()

    def _read(self) -> None:
        try:
            while True:
                opcode, payload = self._frame()
                if opcode == 0x1:
                    self.messages.put(json.loads(payload))
                elif opcode == 0x9:  # ping: a browser answers it, or daphne closes the socket
                    self._send(0xA, payload)
                elif opcode == 0x8:
                    raise ConnectionError(f"the live socket was closed: {payload[:2].hex()}")
        except (OSError, ConnectionError) as exc:
            self.closed = str(exc)
            self.messages.put(None)

    def receive(self, timeout: float) -> dict | None:
        """The next text frame as JSON, or None when none came within ``timeout`` seconds."""
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            return None
        if message is None:
            raise SystemExit(self.closed or "the live socket was closed")
        return message

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = secrets.token_bytes(4)  # a client's frames are masked
        head = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames carry at most 125 bytes
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close(self) -> None:
        self.sock.close()


class Bench:
    def __init__(self, ram: int) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from images.models import Image
        from portal.backends.libvirt.driver import LibvirtDriver
        from portal.models import QUOTA_RESOURCES, Membership, Quota, Tenant
        from portal.services import create_api_token
        from vms.models import Flavor, Host

        self.ram = ram
        self.conn = connect(URI)
        (WORK / "pool").mkdir(mode=0o755)
        el = ET.Element("pool", type="dir")
        ET.SubElement(el, "name").text = f"{PREFIX}pool"
        ET.SubElement(ET.SubElement(el, "target"), "path").text = str(WORK / "pool")
        self.pool = self.conn.storagePoolCreateXML(ET.tostring(el, encoding="unicode"), 0)
        cap = LibvirtDriver(URI).capacity(self.pool.name())
        self.host = Host.objects.create(
            name=f"{PREFIX}host",
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
        Quota.objects.update_or_create(tenant=self.tenant, defaults=dict.fromkeys(QUOTA_RESOURCES, -1))
        user = get_user_model().objects.create_user("bench-member")
        Membership.objects.create(user=user, tenant=self.tenant, role="member")
        self.flavor = Flavor.objects.create(name="bench", vcpus=1, ram_mib=ram, disk_gib=1)
        source = ROOT / "var" / "test-media" / "tiny.qcow2"
        self.image = Image.objects.create(
            tenant=self.tenant,
            name="tiny",
            kind="disk",
            disk_format="qcow2",
            stored_format="qcow2",
            status=Image.Status.ACTIVE,
            size=source.stat().st_size,
            virtual_size=20 * MIB,
        )
        self.image.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.image.path)
        _token, raw = create_api_token(user=user, name="bench", scope="write")
        browser = Client()
        browser.force_login(user)
        self.cookie = f"sessionid={browser.cookies['sessionid'].value}"
        self.redis = OwnRedis(WORK / "redis.log")
        self.redis.start()
        self.portal = Portal(tmp_path=WORK, redis=self.redis, database_url=os.environ["DATABASE_URL"])
        self.portal.start()
        self.api = Api(self.portal.url, raw)
        self.socket = Socket(self.portal.port, self.cookie, path=f"/ws/live/?tenant={self.tenant.pk}")

    # ---------------------------------------------------------------- (A) the portal

    def portal_run(self, count: int) -> tuple[float, float]:
        """(seconds to the last ``running`` event on the socket, seconds to the last ``running`` in the API)."""
        while self.socket.receive(0.05) is not None:  # what earlier runs left on the socket
            pass
        t0 = time.perf_counter()
        reply = self.api.post(
            "/api/v1/instances/",
            {
                "tenant": self.tenant.pk,
                "name": f"p{uuid.uuid4().hex[:6]}",
                "flavor": self.flavor.pk,
                "image": self.image.pk,
                "count": count,
            },
        )
        assert reply.status == 202, reply.body
        ids = {row["id"] for row in reply.body["instances"]}
        api_done: queue.Queue = queue.Queue()
        threading.Thread(target=self._poll_api, args=(set(ids), t0, api_done), daemon=True).start()
        pending = set(ids)
        deadline = time.monotonic() + 300
        while pending:
            message = self.socket.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise SystemExit(f"no running event for {sorted(pending)} within 300 s")
            data = message.get("data") or {}
            if message.get("type") == "instance" and data.get("state") == "running":
                pending.discard(data.get("id"))
        socket_took = time.perf_counter() - t0
        api_took = api_done.get(timeout=300)
        if isinstance(api_took, BaseException):
            raise SystemExit(f"the API poll failed: {api_took}")
        self._delete(ids)
        return socket_took, api_took

    def _poll_api(self, pending: set[int], t0: float, done: queue.Queue) -> None:
        """Puts the seconds until the API read every instance running, or what went wrong, in ``done``."""
        try:
            while pending:
                for instance_id in list(pending):
                    body = self.api.instance(instance_id)
                    if body["state"] == "running":
                        pending.discard(instance_id)
                    elif body["state"] == "error":
                        raise RuntimeError(f"instance {instance_id} failed: {body['state_reason']}")
                if pending:
                    time.sleep(0.01)
            done.put(time.perf_counter() - t0)
        except Exception as exc:  # handed to the main thread, which stops the bench
            done.put(exc)

    def _delete(self, ids: set[int]) -> None:
        operations = []
        for instance_id in ids:
            reply = self.api.call("DELETE", f"/api/v1/instances/{instance_id}/")
            assert reply.status == 202, reply.body
            operations.append(reply.body["id"])
        for operation_id in operations:
            deadline = time.monotonic() + 120
            while self.api.operation(operation_id)["state"] not in ("succeeded", "failed"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"delete {operation_id} not finished after 120 s")
                time.sleep(0.05)

    # ---------------------------------------------------------------- (B) libvirt-python

    def direct_run(self, count: int) -> float:
        base = self.pool.storageVolLookupByName(f"labcloud-image-{self.image.uuid}.qcow2").path()
        t0 = time.perf_counter()
        made = []
        for _ in range(count):
            u = str(uuid.uuid4())
            name = f"{PREFIX}d-{u}"
            self.pool.createXML(
                overlay_xml(name=f"{name}.qcow2", capacity=GIB, backing_path=base, backing_format="qcow2"), 0
            )
            seed = f"{name}-seed.iso"
            upload_bytes(
                URI, pool_name=self.pool.name(), name=seed, data=build_nocloud_seed(instance_id=u, hostname="d")
            )
            spec = InstanceSpec(
                uuid=u,
                name=name,
                title=name,
                vcpus=1,
                memory_mib=self.ram,
                virt_type="qemu",
                vnc_password=secrets.token_urlsafe(6)[:8],
                serial_log=str(WORK / f"{name}.serial.log"),
                disks=(
                    DiskSpec(
                        device="disk", pool=self.pool.name(), volume=f"{name}.qcow2", format="qcow2", boot_order=1
                    ),
                    DiskSpec(device="cdrom", pool=self.pool.name(), volume=seed, format="raw", readonly=True),
                ),
            )
            self.conn.defineXML(build_domain_xml(spec)).create()
            made.append((u, name))
        wait_running(self.conn, [u for u, _ in made])
        took = time.perf_counter() - t0
        for u, name in made:
            dom = self.conn.lookupByUUIDString(u)
            dom.destroy()
            dom.undefine()
            for volume in (f"{name}.qcow2", f"{name}-seed.iso"):
                self.pool.storageVolLookupByName(volume).delete(0)
        return took

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.socket.close()
        self.portal.stop()
        self.redis.stop()
        for dom in self.conn.listAllDomains(0):
            if dom.name().startswith(PREFIX):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
        undefine_nwfilters(self.conn, PREFIX)  # the instances' port filters and their groups' filters
        with contextlib.suppress(libvirt.libvirtError):
            for vol in self.pool.listAllVolumes(0):
                vol.delete(0)
            self.pool.destroy()


def measure(bench: Bench, count: int, rounds: int) -> None:
    socket_times, api_times, direct_times = [], [], []
    for _ in range(rounds):
        for side in ("A", "B", "B", "A"):
            if side == "A":
                on_socket, in_api = bench.portal_run(count)
                socket_times.append(on_socket)
                api_times.append(in_api)
                print(f"  x{count:<3} portal  socket {on_socket * 1000:8.0f} ms   api {in_api * 1000:8.0f} ms")
            else:
                took = bench.direct_run(count)
                direct_times.append(took)
                print(f"  x{count:<3} libvirt-python      {took * 1000:8.0f} ms")
    s, a, d = (statistics.median(t) * 1000 for t in (socket_times, api_times, direct_times))
    print(
        f"x{count}: portal median {s:.0f} ms to the socket's running, {a:.0f} ms to the API's; libvirt-python "
        f"median {d:.0f} ms; ratio socket {s / d:.2f}, api {a / d:.2f} (goal <= 1.10)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--ram", type=int, default=96)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    bench = Bench(args.ram)
    try:
        bench.portal_run(1)  # warm-up: the image's copy into the pool is a one-off
        bench.direct_run(1)
        print(f"{os.cpu_count()} CPUs; guests of {args.ram} MiB under {URI}")
        measure(bench, 1, args.rounds)
        if args.count > 1:
            measure(bench, args.count, max(1, args.rounds // 2))
    except BaseException:
        with contextlib.suppress(OSError):
            print((WORK / "serve.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        bench.close()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
