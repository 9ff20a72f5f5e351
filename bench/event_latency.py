"""Benchmark: time from a libvirt lifecycle event to the new state on a browser's websocket.

    .venv/bin/python bench/event_latency.py [--events 20]

Sets up a throw-away SQLite database and its own channel-layer prefix (nothing is shared with a
running portal or other tests on the same Redis), starts a real daphne on 127.0.0.1 (a child
process), runs the host watcher loop in this process (libvirt's test:///default driver keeps its
domains in-process, so the domain operations must happen here too), signs a tenant member in and
connects a minimal websocket client (asyncio streams; daphne's
twisted already owns autobahn in this process) to ``ws/live/``. Then it starts and destroys an ``lctest-``
domain ``--events`` times in all and measures, for each, the time from the libvirt call to the
instance's new state arriving on the socket. Goal: p95 ≤ 1 s. The numbers are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="lctest-bench-"))
TOKEN = secrets.token_hex(4)
(WORK / "bench_settings.py").write_text(
    "from portal.settings import *  # noqa: F403\n"
    f"DATABASES['default']['NAME'] = {str(WORK / 'bench.sqlite3')!r}\n"
    f"CHANNEL_LAYERS['default']['CONFIG']['prefix'] = 'lctest-bench-{TOKEN}'\n"
    "LOGGING['root']['level'] = 'WARNING'\n"
)
sys.path[:0] = [str(ROOT), str(WORK)]
os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(WORK), os.environ.get("PYTHONPATH", "")])

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.test import Client  # noqa: E402

from portal.backends.base import InstanceSpec  # noqa: E402
from portal.backends.libvirt.connection import start_event_loop  # noqa: E402
from portal.backends.libvirt.driver import LibvirtDriver  # noqa: E402

URI = "test:///default"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"daphne did not listen on 127.0.0.1:{port}")


def populate(domain_uuid: str):
    from django.contrib.auth import get_user_model

    from portal.models import Membership, Tenant
    from portal.services import ensure_quota
    from vms.models import Flavor, Host, Instance

    user = get_user_model().objects.create_user("bench-member", password=None)
    tenant = Tenant.objects.create(name="Bench", slug="bench")
    ensure_quota(tenant=tenant)
    Membership.objects.create(user=user, tenant=tenant, role="member")
    flavor = Flavor.objects.create(name="bench", vcpus=1, ram_mib=128, disk_gib=1)
    host = Host.objects.create(name="lctest-bench", uri=URI, storage_pool="default-pool")
    Instance.objects.create(
        uuid=domain_uuid, tenant=tenant, name="bench", flavor=flavor, vcpus=1, ram_mib=128, disk_gib=1, host=host
    )
    client = Client()
    client.force_login(user)
    return host, f"sessionid={client.cookies['sessionid'].value}"


class LiveSocket:
    """Just enough of a websocket client (RFC 6455) to read the server's text frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, path: str, cookie: str) -> LiveSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        status = await reader.readline()
        if b" 101 " not in status:
            raise RuntimeError(f"websocket refused: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        return cls(reader, writer)

    async def receive(self) -> dict:
        """The next text frame as JSON (the server sends small unfragmented frames)."""
        while True:
            head = await self.reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length)
            if opcode == 0x8:
                raise RuntimeError(f"websocket closed: {payload[:2].hex()}")
            if opcode == 0x1:
                return json.loads(payload)

    def close(self) -> None:
        self.writer.close()


async def measure(port: int, cookie: str, driver: LibvirtDriver, domain: str, events: int) -> list[float]:
    sock = await LiveSocket.open(port, "/ws/live/", cookie)
    timings = []
    try:
        for i in range(events):
            action, expected = (driver.start, "running") if i % 2 == 0 else (driver.power_off, "shutoff")
            t0 = time.perf_counter()
            await asyncio.to_thread(action, domain)
            while True:
                event = await asyncio.wait_for(sock.receive(), 5)
                data = event.get("data", {})
                if event.get("type") == "instance" and data.get("uuid") == domain and data.get("state") == expected:
                    timings.append((time.perf_counter() - t0) * 1000)
                    break
    finally:
        sock.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()

    from vms.watcher import HostWatcher

    port = free_port()
    daphne = watcher = thread = None
    driver = LibvirtDriver(URI)
    domain = str(uuid.uuid4())
    try:
        call_command("migrate", verbosity=0)
        start_event_loop()
        driver.define(InstanceSpec(uuid=domain, name=f"lctest-bench-{TOKEN}", virt_type="qemu", memory_mib=128))
        host, cookie = populate(domain)
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port)
        watcher = HostWatcher(host_names=[host.name])

        def run_watcher():
            try:
                watcher.run()
            finally:
                connections.close_all()

        thread = threading.Thread(target=run_watcher, daemon=True)
        thread.start()
        if not watcher.ready.wait(10) or not all(w.connected for w in watcher.watches.values()):
            raise RuntimeError("the watcher did not register the host")
        timings = asyncio.run(measure(port, cookie, driver, domain, args.events))
        timings.sort()
        p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
        print(f"libvirt {URI} → watcher → Redis channel layer → daphne → websocket client, {len(timings)} events")
        print(
            f"p50 {statistics.median(timings):.1f} ms   p95 {p95:.1f} ms   max {timings[-1]:.1f} ms   (goal ≤ 1000 ms)"
        )
    finally:
        if watcher is not None:
            watcher.stop()
            thread.join(timeout=10)
        if daphne is not None:
            daphne.terminate()
            try:
                daphne.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daphne.kill()
                daphne.wait()
        import contextlib

        from portal.backends.base import BackendError

        with contextlib.suppress(BackendError):
            driver.undefine(domain)
        connections.close_all()
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
