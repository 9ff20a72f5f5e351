"""URL imports against hostile servers, with real Celery worker processes on Redis.

* DNS rebinding: a name that resolves to a public address when it is checked and to 127.0.0.1 when
  the worker connects must not make the worker fetch from 127.0.0.1. The attacker's DNS server is a
  real one: the worker runs in a network namespace of the test's own (``isolated_net``) where the
  machine's nameserver address belongs to the test's DNS server, so glibc's ordinary lookup (the
  unchanged /etc/resolv.conf) reaches it; the "public" server has a global address on that
  namespace's loopback. Nothing leaves the machine: the namespace has no other interface.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection

from images.imports import import_image
from images.models import Image
from images.tests import isolated_net
from portal.celery import app as celery_app
from portal.testing import database_url_of_this_test, switch_celery_broker

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_BASE = settings.REDIS_URL.rsplit("/", 1)[0]
BROKER = f"{REDIS_BASE}/14"
PUBLIC = "93.184.216.34"  # a global address (example.com's); in the test it exists only inside the namespace
NAME = "images.lctest-rebind.example"
SECRET = b"METADATA-SERVICE-SECRET "
PUBLIC_DISK = b"PUBLIC-MIRROR-DISK "


@pytest.fixture
def queue():
    """This test's queue on its own Redis database (no other worker takes its tasks); removed after."""
    previous_url, previous_queue = celery_app.conf.broker_url, celery_app.conf.task_default_queue
    previous_eager = celery_app.conf.task_always_eager
    name = f"lctest-{uuid.uuid4().hex[:12]}"
    switch_celery_broker(BROKER, name)
    celery_app.conf.task_always_eager = False
    try:
        yield name
    finally:
        client = redis.Redis.from_url(BROKER)
        keys = client.keys(f"*{name}*")
        if keys:
            client.delete(*keys)
        celery_app.conf.task_always_eager = previous_eager
        switch_celery_broker(previous_url, previous_queue)
        connection.close()


def child_env(queue: str, **extra: str) -> dict[str, str]:
    """The environment of the portal processes this test starts: its database, broker and queue."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": database_url_of_this_test(),
        "CELERY_BROKER_URL": BROKER,
        "REDIS_URL": BROKER,
        "CELERY_QUEUE": queue,
        "CHANNEL_LAYER_PREFIX": queue,
        "LABCLOUD_IMAGE_STORE": str(settings.LABCLOUD_IMAGE_STORE),
        "IMAGE_IMPORT_ALLOWED_HOSTS": ",".join(settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class Worker:
    """``celery -A portal worker`` as a child process in a process group of its own (its pool dies with it)."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Worker:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=settings.BASE_DIR,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        deadline = time.monotonic() + 60
        while b" ready." not in self.log.read_bytes():
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready within 60 s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)  # cold shutdown: running tasks are not waited for
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool processes left in its group


def worker_argv(queues: list[str], *, name: str, pool: str = "solo", concurrency: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "portal",
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "-n",
        f"{name}@localhost",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "INFO",
    ]


def image_queue(queue: str) -> str:
    return f"{queue}.images"


class Served(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` for every GET and counts the requests in ``hits``."""

    body = b""
    hits: list[str]

    def do_GET(self):
        self.hits.append(self.headers.get("Host", ""))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def served(body: bytes) -> type[Served]:
    return type("Handler", (Served,), {"body": body, "hits": []})


@contextlib.contextmanager
def http_server_in(net: isolated_net.IsolatedNet, address: str, port: int, handler):
    """An HTTP server on ``address:port`` inside the namespace (no name lookups of its own)."""
    server = http.server.ThreadingHTTPServer((address, port), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = net.socket()
    socketserver.TCPServer.server_bind(server)  # HTTPServer's would look up the address's name
    server.server_name, server.server_port = address, server.socket.getsockname()[1]
    server.server_activate()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


REQUEST_IMPORT = """
import sys
import django
django.setup()
from django.contrib.auth import get_user_model
from images.imports import import_image
from portal.models import Tenant
from portal.services import ServiceError
user = get_user_model().objects.get(pk=int(sys.argv[1]))
tenant = Tenant.objects.get(pk=int(sys.argv[2]))
try:
    image = import_image(actor=user, tenant=tenant, name="rebound", url=sys.argv[3], disk_format="raw")
except ServiceError as exc:
    print("refused:", exc.message)
    sys.exit(3)
print(image.pk)
"""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def finished(image: Image) -> bool:
    image.refresh_from_db()
    return image.status in {Image.Status.ACTIVE, Image.Status.FAILED}


# ---------------------------------------------------------------- DNS rebinding


@pytest.mark.skipif(bool(isolated_net.unavailable()), reason=isolated_net.unavailable() or "available")
@pytest.mark.parametrize("public_answers", [2, 1], ids=["rebind-at-download", "rebind-at-worker-check"])
def test_a_name_rebound_to_loopback_is_never_fetched_from_loopback(
    actors, settings, queue, tmp_path, public_answers
):
    """The attacker's name answers the public address for the first ``public_answers`` lookups (the portal's
    check when the import is requested, the worker's before it downloads), 127.0.0.1 from then on (TTL 0)."""
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = []  # every host, with the address checks
    answers: list[str] = []

    def answer(name: str) -> str:
        answers.append(PUBLIC if len(answers) < public_answers else "127.0.0.1")
        return answers[-1]

    public_handler = served(PUBLIC_DISK * (1024 * 1024 // len(PUBLIC_DISK)))
    secret_handler = served(SECRET * (1024 * 1024 // len(SECRET)))
    with isolated_net.IsolatedNet([PUBLIC]) as net:
        net.resolver({NAME}, answer)
        if connection.vendor == "postgresql":
            net.bridge(connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
        broker = urlsplit(BROKER)
        net.bridge(broker.hostname, broker.port or 6379)
        with (
            http_server_in(net, PUBLIC, 0, public_handler) as public,
            http_server_in(net, "127.0.0.1", public.server_port, secret_handler),
        ):
            url = f"http://{NAME}:{public.server_port}/disk.img"
            env = child_env(queue)
            argv = net.command(worker_argv([queue, image_queue(queue)], name=queue))
            with Worker(argv, env=env, log=tmp_path / "worker.log") as worker:
                assert net.holds(worker.proc.pid), "the worker must run inside the test's namespace"
                request = subprocess.run(
                    net.command(
                        [sys.executable, "-c", REQUEST_IMPORT, str(actors.member.pk), str(actors.tenant.pk), url]
                    ),
                    cwd=settings.BASE_DIR,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert request.returncode == 0, request.stdout + request.stderr
                image = Image.objects.get(pk=int(request.stdout.split()[-1]))
                wait_for(lambda: finished(image), 90, "the import to end")
                log = (tmp_path / "worker.log").read_text()

    assert secret_handler.hits == [], f"the worker fetched 127.0.0.1's secret (DNS answers {answers}):\n{log[-2000:]}"
    stored = image.path if image.stored_format else image.partial_path
    assert not stored.exists() or SECRET not in stored.read_bytes()
    if public_answers == 2:
        # The worker connected to the address it checked, naming the host as the URL does.
        assert image.status == Image.Status.ACTIVE, image.failure_reason
        assert public_handler.hits == [f"{NAME}:{public.server_port}"]
    else:
        assert image.status == Image.Status.FAILED
        assert "local or private" in image.failure_reason
        assert public_handler.hits == []


# ---------------------------------------------------------------- HTTPS to the pinned address


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.1 with a certificate for "localhost" that this process trusts."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # OpenSSL's default trust store for this process
    handler = served(PUBLIC_DISK * (1024 * 1024 // len(PUBLIC_DISK)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_https_imports_check_the_certificate_against_the_url_host(
    actors, settings, eager_tasks, django_capture_on_commit_callbacks, tls_server, host
):
    server, handler = tls_server
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = [host]
    url = f"https://{host}:{server.server_port}/disk.img"
    with django_capture_on_commit_callbacks(execute=True):
        image = import_image(actor=actors.member, tenant=actors.tenant, name="tls", url=url, disk_format="raw")
    image.refresh_from_db()
    if host == "localhost":  # the name the certificate is for
        assert image.status == Image.Status.ACTIVE, image.failure_reason
        assert handler.hits == [f"localhost:{server.server_port}"]
    else:  # the right server, but the URL names an address the certificate does not cover
        assert image.status == Image.Status.FAILED
        assert image.failure_reason == "The server's certificate is not valid for 127.0.0.1."
        assert handler.hits == []
