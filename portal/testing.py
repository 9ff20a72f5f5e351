"""Test helpers shared by every app's tests (imported by the root conftest.py).

The access matrix
-----------------
Every endpoint and page is checked for the five standard actors:

    anonymous     not logged in
    outsider      member of another tenant only
    member        member of the object's tenant
    tenant_admin  admin of the object's tenant
    cloud_admin   Django staff

``assert_access_matrix`` runs one request per actor, each with a fresh client, and
reports every mismatch at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kombu.pools
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from portal.celery import app as celery_app

ROLES = ("anonymous", "outsider", "member", "tenant_admin", "cloud_admin")


@dataclass
class Actors:
    """The five standard actors and the two tenants they live in."""

    tenant: Any  # the tenant under test ("A")
    other_tenant: Any  # the outsider's tenant ("B")
    outsider: Any
    member: Any
    tenant_admin: Any
    cloud_admin: Any

    def user(self, role: str):
        return None if role == "anonymous" else getattr(self, role)

    def client(self, role: str, *, api: bool = True):
        client = APIClient() if api else Client()
        user = self.user(role)
        if user is not None:
            client.force_login(user)
        return client


def assert_access_matrix(
    actors: Actors,
    *,
    method: str,
    url: str | Callable[[], str],
    expected: Mapping[str, int | tuple[int, ...]],
    data: Any = None,
    api: bool = True,
) -> None:
    """Request ``url`` as each actor and compare the status codes with ``expected``.

    ``url`` may be a callable, called once per actor, so a test can create a fresh
    object for each request (e.g. for DELETE). ``expected`` must name every role.
    """
    missing = set(ROLES) - set(expected)
    assert not missing, f"expected statuses missing for {sorted(missing)}"
    failures = []
    for role in ROLES:
        client = actors.client(role, api=api)
        target = url() if callable(url) else url
        send = getattr(client, method.lower())
        if data is None:
            response = send(target)
        elif api:
            response = send(target, data, format="json")
        else:
            response = send(target, data)
        want = expected[role]
        allowed = want if isinstance(want, tuple) else (want,)
        if response.status_code not in allowed:
            failures.append(f"{role}: {method} {target} -> {response.status_code}, expected {want}")
    assert not failures, "access matrix mismatch:\n" + "\n".join(failures)


def count_queries(func: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as ctx:
        func()
    return len(ctx.captured_queries)


def assert_constant_queries(make_rows: Callable[[int], None], request: Callable[[], Any], *, budget: int) -> None:
    """A list's query count must not grow with its rows, and must stay within ``budget``.

    ``make_rows(n)`` adds n more rows; ``request()`` performs the list request.
    """
    make_rows(2)
    few = count_queries(request)
    make_rows(20)
    many = count_queries(request)
    assert many == few, f"query count grows with rows: {few} queries for few rows, {many} for many"
    assert many <= budget, f"{many} queries, budget {budget}"


def undefine_nwfilters(conn, prefix: str) -> list[str]:
    """Undefine the network filters of libvirt connection ``conn`` named ``prefix…`` (a test's anti-spoofing
    filter, once no domain uses it; one still in use stays); the names found."""
    import libvirt

    found = []
    # Port filters reference group filters, which reference nothing of ours: those first.
    filters = sorted(
        (f for f in conn.listAllNWFilters(0) if f.name().startswith(prefix)), key=lambda f: "-port-" not in f.name()
    )
    for nwfilter in filters:
        found.append(nwfilter.name())
        with contextlib.suppress(libvirt.libvirtError):
            nwfilter.undefine()
    return found


def assert_problem(response, status: int, code: str | None = None) -> dict:
    """The response is an RFC 7807 problem document with ``status`` (and ``code``, when given)."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].split(";")[0] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["code"] == code
        assert body["type"].endswith("/" + code)
    return body


# Browser tests: Debian's Chromium driven by Playwright (never `playwright install`).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_TIMEOUT_MS = 15_000


def sign_in(page, base: str, username: str, password: str) -> None:
    """Sign in through the login form of the portal at ``base`` (a Playwright page); lands on the overview."""
    page.goto(base + reverse("login"))
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#lc-login-submit")
    page.wait_for_url(base + reverse("overview"))


def without_live_socket_errors(errors: list[str]) -> list[str]:
    """Browser errors minus the live socket's: Django's live_server speaks WSGI only, so /ws/live/ gets a 404.

    Pages open the socket wherever live updates exist; the socket itself is tested against daphne
    (vms/tests/views/test_browser_instances.py, portal/tests/test_browser_overview.py).
    """
    return [error for error in errors if "/ws/live/" not in error]


def switch_celery_broker(url: str, queue: str) -> None:
    """Point the Celery app at another broker and default queue, e.g. a private Redis database and queue of a test.

    Producers keep the connection pool of the broker they first used (even eager calls create
    one), kombu's global pool registry would hand a closed pool back the next time the same broker
    is used, and the app's AMQP helper caches the queues and routes of the first default queue:
    close and forget them all, so the next message goes where the settings now say.
    """
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    kombu.pools.reset()
    celery_app.__dict__.pop("amqp", None)
    celery_app.conf.broker_url = url
    celery_app.conf.task_default_queue = queue


def database_url_of_this_test() -> str:
    """A ``DATABASE_URL`` for a child process (daphne, a Celery worker) that must use this test's database."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or ''}:{db.get('PORT') or 5432}/{db['NAME']}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def child_process(args: list[str], *, env: dict, log: Path, port: int | None = None, start_timeout: float = 30):
    """A child process of the test (daphne, the console proxy, a Celery worker), stopped by PID at the end.

    With ``port``, waits until something accepts connections on 127.0.0.1:``port``; fails with the
    child's log when it exits first or does not listen in time.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - the tests' own commands
            args, cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + start_timeout
        while port is not None:
            if process.poll() is not None:
                pytest.fail(f"{args[:4]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{args[:4]} did not listen on {port} within {start_timeout} s")
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# ---------------------------------------------------------------- services shared by test sessions


@contextlib.contextmanager
def session_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (made with its folder) for the ``with`` block: one test session at a time
    starts or stops a shared service (the devcloud, the second libvirt host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def other_live_leases(folder: Path) -> list[Path]:
    """The ``lease-<pid>`` files in ``folder`` of other test sessions still alive; those of dead ones are removed."""
    leases = []
    for lease in folder.glob("lease-*"):
        pid = int(lease.name.removeprefix("lease-"))
        if pid == os.getpid():
            continue
        if pid_alive(pid):
            leases.append(lease)
        else:
            lease.unlink(missing_ok=True)  # a session that died without cleaning up
    return leases


# ---------------------------------------------------------------- services of a test's own


REDIS_SERVER = "/usr/bin/redis-server"  # Debian's redis-server (scripts/bootstrap.sh installs it)


class OwnRedis:
    """A redis-server of the test's own on 127.0.0.1:``port`` (no persistence), stopped and started by its PID.

    For fault tests: the shared Redis of the machine (127.0.0.1:6379) is never stopped. ``stop()`` is a
    real outage (SIGTERM, the port refuses connections until ``start()`` listens on it again).
    """

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not listen on {self.port} within {timeout} s")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def own_redis(log: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian 12's PostgreSQL (scripts/bootstrap.sh --test installs it)


class OwnPostgres:
    """A PostgreSQL cluster of the test's own: initdb in a folder of its own under /var/tmp (the ``postgres``
    user must reach it), a free 127.0.0.1 port, trust for local connections; started with ``pg_ctl`` and
    stopped by its postmaster's PID (SIGINT: PostgreSQL's fast shutdown). The machine's shared server
    (127.0.0.1:5432) is never touched. ``remove()`` stops it and deletes the folder.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lctest-pg-", dir="/var/tmp"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")

    def _as_postgres(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(  # noqa: S603 - fixed arguments
            ["/usr/sbin/runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    def init(self) -> None:
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def start(self, timeout: int = 60) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(timeout),
            "-o",
            options,
            "start",
            timeout=timeout + 10,
        )

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float = 60) -> None:
        pid = self.pid
        if pid is None or not pid_alive(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        subprocess.run(  # noqa: S603 - fixed arguments
            [
                "/usr/bin/psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def console_error(msg) -> str:
    """A browser console error with the URL it is about: "Failed to load resource: … 404" names the resource."""
    url = (msg.location or {}).get("url", "")
    return f"{msg.text} [{url}]" if url and msg.text.startswith("Failed to load resource") else msg.text
