"""URL imports against hostile servers, with real Celery worker processes on Redis.

* DNS rebinding: a name that resolves to a public address when it is checked and to 127.0.0.1 when
  the worker connects must not make the worker fetch from 127.0.0.1. The attacker's DNS server is a
  real one: the worker runs in a network namespace of the test's own (``isolated_net``) where the
  machine's nameserver address belongs to the test's DNS server, so glibc's ordinary lookup (the
  unchanged /etc/resolv.conf) reaches it; the "public" server has a global address on that
  namespace's loopback. Nothing leaves the machine: the namespace has no other interface.
* HTTPS: the connection to the pinned address still checks the certificate against the URL's host.
* Slow servers on 127.0.0.1 (one byte, or 4 KiB, every half second): with `make run`'s two workers
  (prefork, two slots each) a launch and a power action on the real qemu:///system start at once
  while two slow imports hold the image worker, and the imports fail as "too slow" and "took too
  long" within the test's deadline, leaving no file and no quota.
* A task's time limit (Celery's SoftTimeLimitExceeded in a real prefork worker) fails the import
  cleanly; an interrupted qemu-img conversion leaves no process and no file.
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
from portal.selectors import tenant_usage
from portal.testing import database_url_of_this_test, switch_celery_broker
from vms import lifecycle
from vms.models import Flavor, Instance, Operation
from vms.tests import conftest as vms_conftest
from vms.tests.conftest import active_image, leftovers

pytestmark = pytest.mark.django_db(transaction=True)

# The real libvirt host of the compute tests (private pool, lctest- names removed after).
lctest_host, portal_host = vms_conftest.lctest_host, vms_conftest.portal_host

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
    image = import_image(actor=user, tenant=tenant, name=sys.argv[4], url=sys.argv[3], disk_format="raw")
except ServiceError as exc:
    print("refused:", exc.message)
    sys.exit(3)
print(image.pk)
"""


def request_import(actors, url: str, *, name: str, env: dict[str, str], wrap=lambda argv: argv) -> Image:
    """``import_image`` in a process of its own with ``env``, as the web process does (the task message it
    sends carries that process's task settings); ``wrap`` runs it elsewhere (in a network namespace)."""
    argv = [sys.executable, "-c", REQUEST_IMPORT, str(actors.member.pk), str(actors.tenant.pk), url, name]
    request = subprocess.run(wrap(argv), cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert request.returncode == 0, request.stdout + request.stderr
    return Image.objects.get(pk=int(request.stdout.split()[-1]))


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
def test_a_name_rebound_to_loopback_is_never_fetched_from_loopback(actors, settings, queue, tmp_path, public_answers):
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
                image = request_import(actors, url, name="rebound", env=env, wrap=net.command)
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
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
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


# ---------------------------------------------------------------- slow servers


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Announces 10 MiB, then trickles: /loris one byte every half second, /crawl 4 KiB every half second."""

    stop: threading.Event

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10 * 1024 * 1024))
        self.end_headers()
        piece = b"x" if self.path.startswith("/loris") else b"x" * 4096
        try:
            while not self.stop.wait(0.5):
                self.wfile.write(piece)
                self.wfile.flush()
        except OSError:
            pass  # the client gave up

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    handler = type("Handler", (SlowHandler,), {"stop": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()


def operation_of(image: Image) -> Operation:
    return Operation.objects.get(kind="image.import", target_id=str(image.pk))


def finished_operation(operation: Operation) -> Operation | None:
    operation.refresh_from_db()
    return operation if operation.finished else None


IMPORT_DEADLINE = 30  # seconds: the download deadline of the test's workers
RATE_WINDOW = 3  # seconds over which the minimum rate is measured
MIN_RATE = 1024  # bytes per second


@pytest.mark.libvirt_guests
def test_slow_imports_fail_in_time_and_never_hold_up_instance_actions(
    actors, portal_host, guest_media, queue, slow_server, tmp_path
):
    """Two slow imports take both image slots of `make run`'s workers; a launch and a power action still start
    at once on the instance worker, and the imports fail with a clear reason within the deadline."""
    image = active_image(tenant=actors.tenant, source=guest_media["tiny.qcow2"], name="tiny")
    flavor = Flavor.objects.create(name="lctest.slowimports", vcpus=1, ram_mib=128, disk_gib=1)
    env = child_env(
        queue,
        LABCLOUD_DOMAIN_PREFIX=settings.LABCLOUD_DOMAIN_PREFIX,
        LABCLOUD_SERIAL_LOG_DIR=settings.LABCLOUD_SERIAL_LOG_DIR,
        IMAGE_IMPORT_TIMEOUT_SECONDS=str(IMPORT_DEADLINE),
        IMAGE_IMPORT_MIN_RATE_BYTES=str(MIN_RATE),
        IMAGE_IMPORT_RATE_WINDOW_SECONDS=str(RATE_WINDOW),
    )
    # The two workers `make run` starts, prefork pools of 2 (as there).
    instance_worker = worker_argv([queue], name=f"{queue}-instances", pool="prefork", concurrency=2)
    image_worker = worker_argv([image_queue(queue)], name=f"{queue}-images", pool="prefork", concurrency=2)
    instance = None
    with (
        Worker(instance_worker, env=env, log=tmp_path / "instance-worker.log"),
        Worker(image_worker, env=env, log=tmp_path / "image-worker.log"),
    ):
        try:
            usage_before = tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["image_storage_gib"]
            imports = {
                kind: import_image(
                    actor=actors.member,
                    tenant=actors.tenant,
                    name=kind,
                    url=f"{slow_server}/{kind}.img",
                    disk_format="raw",
                )
                for kind in ("loris", "crawl")
            }
            import_ops = {kind: operation_of(img) for kind, img in imports.items()}

            def both_downloading():
                return all(
                    Operation.objects.get(pk=op.pk).state == Operation.State.RUNNING for op in import_ops.values()
                )

            wait_for(both_downloading, 30, "both imports to start downloading")

            launch = lifecycle.launch_instances(
                actor=actors.member, tenant=actors.tenant, name="beside-imports", flavor=flavor, image=image
            )
            instance, launch_op = launch.instances[0], launch.operations[0]
            launch_op = wait_for(lambda: finished_operation(launch_op), 90, "the launch (behind the slow imports?)")
            assert launch_op.state == Operation.State.SUCCEEDED, launch_op.error
            stop_op = lifecycle.request_action(actor=actors.member, instance=instance, action="stop")
            stop_op = wait_for(lambda: finished_operation(stop_op), 60, "the power action")
            assert stop_op.state == Operation.State.SUCCEEDED, stop_op.error

            crawl_op = Operation.objects.get(pk=import_ops["crawl"].pk)
            for op in (launch_op, stop_op):
                waited = (op.started_at - op.created_at).total_seconds()
                assert waited < 5, f"{op.kind} waited {waited:.1f} s for a worker"
            assert crawl_op.finished_at is None or launch_op.started_at < crawl_op.finished_at

            for kind, op in import_ops.items():
                import_ops[kind] = wait_for(lambda op=op: finished_operation(op), IMPORT_DEADLINE + 30, f"{kind}")
        finally:
            if instance is not None and Instance.objects.filter(pk=instance.pk).exists():
                lifecycle.delete_instance(actor=actors.member, instance=Instance.objects.get(pk=instance.pk))
                wait_for(lambda: not Instance.objects.filter(pk=instance.pk).exists(), 120, "the delete")

    took = {kind: (op.finished_at - op.started_at).total_seconds() for kind, op in import_ops.items()}
    print(
        f"\nlaunch waited {(launch_op.started_at - launch_op.created_at).total_seconds():.2f} s, "
        f"ran {(launch_op.finished_at - launch_op.started_at).total_seconds():.1f} s; stop waited "
        f"{(stop_op.started_at - stop_op.created_at).total_seconds():.2f} s; imports failed after {took}"
    )
    assert import_ops["loris"].state == Operation.State.FAILED
    assert "too slow" in import_ops["loris"].error
    assert took["loris"] < RATE_WINDOW + 3
    assert import_ops["crawl"].state == Operation.State.FAILED
    assert "took too long" in import_ops["crawl"].error
    assert IMPORT_DEADLINE - 1 < took["crawl"] < IMPORT_DEADLINE + 3
    for img in imports.values():
        img.refresh_from_db()
        assert img.status == Image.Status.FAILED and img.size == 0
        assert not img.partial_path.exists()
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["image_storage_gib"] == usage_before
    assert leftovers(portal_host.lctest.driver.conn, portal_host.lctest.prefix) == []


def test_an_import_stopped_at_its_time_limit_fails_cleanly(actors, queue, slow_server, tmp_path):
    """A download within the rate and the deadline, but past the task's time limit: Celery's
    SoftTimeLimitExceeded in a real prefork worker fails the import cleanly (no file, no quota)."""
    env = child_env(
        queue,
        IMAGE_IMPORT_TASK_TIME_LIMIT_SECONDS="4",
        IMAGE_IMPORT_TIMEOUT_SECONDS="600",
        IMAGE_IMPORT_MIN_RATE_BYTES="1024",
        IMAGE_IMPORT_RATE_WINDOW_SECONDS="3",
    )
    argv = worker_argv([image_queue(queue)], name=f"{queue}-images", pool="prefork", concurrency=1)
    with Worker(argv, env=env, log=tmp_path / "image-worker.log") as worker:
        # Requested by a process with the same settings: Celery sends the time limits with the task.
        image = request_import(actors, f"{slow_server}/crawl.img", name="endless", env=env)
        operation = wait_for(lambda: finished_operation(operation_of(image)), 60, "the time limit")
        assert worker.proc.poll() is None
    log = (tmp_path / "image-worker.log").read_text()
    assert "SoftTimeLimitExceeded" in log or "Soft time limit" in log, log[-2000:]
    assert "Hard time limit" not in log
    image.refresh_from_db()
    assert operation.state == Operation.State.FAILED
    assert operation.error == "The operation took longer than its time limit of 4 seconds."
    assert image.status == Image.Status.FAILED and image.failure_reason == operation.error
    assert image.size == 0 and not image.partial_path.exists()
    assert tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]["image_storage_gib"] == 0
    assert 3 < (operation.finished_at - operation.started_at).total_seconds() < 10  # the limit counts from receipt


@pytest.mark.django_db
def test_an_interrupted_conversion_stops_qemu_img_and_leaves_no_file(media, tmp_path):
    """What a time limit does in the middle of qemu-img convert (here: the progress callback raises)."""
    from celery.exceptions import SoftTimeLimitExceeded

    from images import qemu

    target = tmp_path / "out.qcow2"
    started: list[int] = []

    def interrupt(percent: int) -> None:
        started.append(percent)
        raise SoftTimeLimitExceeded()

    children_before = set(_children())
    with pytest.raises(SoftTimeLimitExceeded):
        qemu.convert(media["vmdk"], target, source_fmt="vmdk", progress=interrupt)
    assert started
    assert not target.exists()
    assert set(_children()) <= children_before  # no qemu-img left running


def _children() -> list[int]:
    pid = os.getpid()
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            if int(fields.get("PPid", "0")) == pid and fields.get("State", "").split()[0] != "Z":
                found.append(int(status.parent.name))
    return found


def test_image_tasks_go_to_the_image_queue_and_serve_starts_a_worker_for_it():
    from images import tasks as image_tasks
    from portal.celery import image_queue as configured_image_queue
    from portal.celery import route_task
    from portal.management.commands.serve import process_specs
    from vms import tasks as vm_tasks

    default = celery_app.conf.task_default_queue
    for task in (
        image_tasks.import_image_task,
        image_tasks.process_image_task,
        image_tasks.capture_image_task,
        image_tasks.distribute_image_task,
    ):
        assert route_task(task.name, (), {}, {}) == {"queue": f"{default}.images"}
        assert task.soft_time_limit and task.time_limit > task.soft_time_limit
    assert route_task(vm_tasks.run_instance_operation.name, (), {}, {}) is None  # the default queue
    assert vm_tasks.run_instance_operation.soft_time_limit == settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT
    specs = {spec.name: spec.argv for spec in process_specs("127.0.0.1", 8000)}
    assert specs["worker"][specs["worker"].index("-Q") + 1] == default
    assert specs["images"][specs["images"].index("-Q") + 1] == configured_image_queue() == f"{default}.images"
    assert "--beat" in specs["worker"] and "--beat" not in specs["images"]
