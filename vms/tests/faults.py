"""Helpers of the fault tests (vms/tests/test_fault_*.py): a whole portal as `manage.py serve` runs it.

``Portal`` is `manage.py serve` (daphne, the Celery worker with beat, the watcher, the console proxy)
as a child process of the test, on a free 127.0.0.1 port, with the database and the Redis it is
given — always a Redis of the test's own (``portal.testing.OwnRedis``), never the machine's shared
one, so a test may stop it. ``Api`` talks to it over HTTP with an API token and keeps every answer,
so a test can say afterwards that none was a 500 and every error was problem+json. ``LiveSocket`` is
just enough of a websocket client to read ``/ws/live/``. Waits are on events (a line, a state, an
answer), bounded in time, never fixed sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from portal.testing import OwnRedis, free_port
from portal.tests.test_serve import Lines

START_TIMEOUT = 90.0  # seconds for serve's four processes to come up on a busy 2-core machine
READY = {
    "worker": r"^worker +\| .*celery@\S+ ready\.",
    "watcher": r"^watcher +\| .*watcher running",
}


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.1):
    """Call ``predicate`` until it returns something true; that value (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Portal:
    """`manage.py serve` with this test's settings; its output in ``out`` (and in ``log``)."""

    def __init__(self, *, tmp_path: Path, redis: OwnRedis, database_url: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tag = f"lctest-{uuid.uuid4().hex[:10]}"
        self.log = tmp_path / "serve.log"
        self.out = Lines()
        self.arrivals: list[tuple[float, str]] = []  # (time.monotonic(), line) as serve printed them
        self.proc: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis.url(0),
            "CELERY_BROKER_URL": redis.url(0),
            "CELERY_QUEUE": self.tag,
            "CHANNEL_LAYER_PREFIX": self.tag,
            "LABCLOUD_VAR_DIR": str(tmp_path / "var"),
            "ALLOWED_HOSTS": "127.0.0.1",
            "CONSOLE_PROXY_HOST": "127.0.0.1",
            "CONSOLE_PROXY_PORT": str(free_port()),
            "LABCLOUD_DOMAIN_PREFIX": settings.LABCLOUD_DOMAIN_PREFIX,
            "LABCLOUD_SERIAL_LOG_DIR": settings.LABCLOUD_SERIAL_LOG_DIR,
            "LABCLOUD_IMAGE_STORE": str(settings.LABCLOUD_IMAGE_STORE),
            "METRICS_INTERVAL_SECONDS": "0",
            "SECRET_KEY": settings.SECRET_KEY,  # the test's sessions (live sockets) are valid there too
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            **(env or {}),
        }

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=settings.BASE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.out.wait_for(r"labcloud is up: http://127\.0\.0\.1:", timeout=START_TIMEOUT)
        for pattern in READY.values():
            self.out.wait_for(pattern, timeout=START_TIMEOUT)

    def _pump(self) -> None:
        with self.log.open("a") as copy:
            for line in self.proc.stdout:
                self.arrivals.append((time.monotonic(), line))
                self.out.write(line)
                copy.write(line)
                copy.flush()
        self.out.close()

    def pid(self, name: str) -> int:
        """The current pid of serve's child ``name`` (its last start or restart line)."""
        found = re.findall(rf"(?:started|restarted) {name} \(pid (\d+)\)", "\n".join(self.out.lines))
        return int(found[-1])

    def printed_at(self, pattern: str, *, after: float = 0.0) -> float:
        """When serve printed the first line matching ``pattern`` after ``after`` (time.monotonic())."""
        regex = re.compile(pattern)
        return next(at for at, line in self.arrivals if at >= after and regex.search(line))

    def count(self, pattern: str) -> int:
        return self.out.count(pattern)

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = {}
        for name in ("web", "worker", "images", "watcher", "console"):
            with contextlib.suppress(IndexError):
                pids[name] = self.pid(name)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in pids.values():  # should serve have died without stopping them: its own children, by pid
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc = None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@dataclass
class Reply:
    method: str
    path: str
    status: int
    content_type: str
    body: Any
    at: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def problem(self) -> bool:
        return self.content_type == "application/problem+json"


@dataclass
class Api:
    """The portal's API over HTTP as one user (an API token); every answer is kept in ``replies``."""

    base: str
    token: str
    replies: list[Reply] = field(default_factory=list)

    def call(self, method: str, path: str, body: dict | None = None, *, language: str | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 - 127.0.0.1
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if language:
            request.add_header("Accept-Language", language)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http://127.0.0.1
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, exc.headers, exc.read()
        content_type = (headers.get("Content-Type") or "").split(";")[0]
        payload: Any = raw.decode("utf-8", "replace")
        if content_type.endswith("json") and raw:
            payload = json.loads(raw)
        reply = Reply(method, path, status, content_type, payload, time.monotonic(), dict(headers.items()))
        self.replies.append(reply)
        return reply

    def get(self, path: str, **kwargs) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: dict | None = None, **kwargs) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def operation(self, operation_id: int) -> dict:
        reply = self.get(f"/api/v1/operations/{operation_id}/")
        return reply.body if reply.status == 200 else {}

    def instance(self, instance_id: int) -> dict:
        reply = self.get(f"/api/v1/instances/{instance_id}/")
        return reply.body if reply.status == 200 else {}

    def server_errors(self) -> list[Reply]:
        """Answers that were 5xx other than a problem+json 503 (a part away for a moment, said as such)."""
        return [r for r in self.replies if r.status >= 500 and not (r.status == 503 and r.problem)]

    def errors_not_problems(self) -> list[Reply]:
        return [r for r in self.replies if r.status >= 400 and not r.problem]


class LiveSocket:
    """Just enough of a websocket client (RFC 6455) to read the text frames of ``/ws/live/`` (as bench/ does)."""

    def __init__(self, port: int, cookie: str, path: str = "/ws/live/", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        if b" 101 " not in status:
            raise RuntimeError(f"websocket refused: {status!r}")
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def receive(self, timeout: float) -> dict | None:
        """The next text frame as JSON; None when nothing came within ``timeout`` s; RuntimeError when closed."""
        self.sock.settimeout(timeout)
        try:
            while True:
                head = self._exactly(2)
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self._exactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self._exactly(8))[0]
                payload = self._exactly(length)
                if opcode == 0x8:
                    raise RuntimeError(f"websocket closed: {payload[:2].hex()}")
                if opcode == 0x1:
                    return json.loads(payload)
        except TimeoutError:
            return None

    def wait_for(self, predicate, *, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and predicate(message):
                return message
        pytest.fail(f"no live update with {what} within {timeout} s")

    def _exactly(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) < n:
            raise RuntimeError("websocket closed by the server")
        return data

    def close(self) -> None:
        self.sock.close()
