"""Images imported from a URL: the request (checked, quota reserved) and the worker's download.

The worker streams the URL into the image store within the upload limit and the tenant's storage
quota, then hands the file to the inspection pipeline (``images.services.process_image``). It
connects only to addresses it checked (no second lookup: DNS rebinding), and a download must keep
a minimum rate and finish within a deadline (``_Pace``), so a trickling server cannot hold a worker.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from images.inspection import ImageRejected
from images.models import Image
from images.selectors import GIB, gib
from images.services import (
    COPY_CHUNK,
    check_size,
    create_image,
    duration_text,
    ensure_store,
    queue_processing,
    reject,
    time_limit_exceeded,
)
from images.tasks import import_image_task
from portal.models import Tenant
from portal.selectors import tenant_usage
from portal.services import ServiceError, reserve_quota
from portal.texts import said
from vms import operations
from vms.models import Operation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportSource:
    """A URL the worker may fetch, and the addresses it was checked against: the only ones it connects to."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]
    host_allowed: bool  # the allow-list names the host: its addresses are not checked


def check_import_url(url: str) -> str:
    """Refuse URLs the worker must not fetch: other schemes, hosts outside the allow-list, and, unless the
    allow-list names the host, any host that resolves to a loopback, private, link-local or otherwise
    non-global address (cloud metadata services, the portal's own services, the lab's internal network)."""
    _parse(url, resolve=False)
    return url


def resolve_import_url(url: str) -> ImportSource:
    """``check_import_url`` plus the addresses the host resolves to now, checked: the download connects
    to one of these and nothing else, so a name that resolves differently a moment later (DNS rebinding)
    cannot send it to another address."""
    return _parse(url, resolve=True)


def _parse(url: str, *, resolve: bool) -> ImportSource:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ServiceError(said(gettext_noop("Import from an http:// or https:// URL.")), field="url")
    host = parsed.hostname
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:
        raise ServiceError(said(gettext_noop("The URL has an invalid port.")), field="url") from exc
    allowed = settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS
    if allowed and host not in allowed:
        raise ServiceError(
            said(gettext_noop("Imports from %(host)s are not allowed on this cloud."), host=host), field="url"
        )
    host_allowed = host in allowed
    target = urllib.parse.urlunparse(("", "", parsed.path or "/", parsed.params, parsed.query, ""))
    if host_allowed and not resolve:
        return ImportSource(parsed.scheme, host, port, target, (), host_allowed)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ServiceError(said(gettext_noop("The host %(host)s cannot be resolved."), host=host), field="url") from exc
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    if not host_allowed and not all(_is_public(address) for address in addresses):
        raise ServiceError(
            said(gettext_noop("Imports from local or private addresses are not allowed (%(host)s)."), host=host),
            field="url",
        )
    return ImportSource(parsed.scheme, host, port, target, addresses, host_allowed)


def _is_public(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_global


def _connect(source: ImportSource, timeout: float) -> socket.socket:
    """A TCP connection to one of the checked addresses of ``source`` (never a new lookup of its name)."""
    error: OSError | None = None
    for address in source.addresses:
        try:
            sock = socket.create_connection((address, source.port), timeout=timeout)
        except OSError as exc:
            error = exc
            continue
        peer = sock.getpeername()[0]
        if peer not in source.addresses or not (source.host_allowed or _is_public(peer)):
            sock.close()
            raise ImageRejected(_("The download was refused: the connection reached an address it may not use."))
        return sock
    raise error or OSError(f"no address for {source.host}")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the checked addresses; the Host header names the URL's host."""

    def __init__(self, source: ImportSource, *, timeout: float) -> None:
        super().__init__(source.host, source.port, timeout=timeout)
        self.source = source

    def connect(self) -> None:
        self.sock = _connect(self.source, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the checked addresses; SNI and the certificate check use the URL's host name."""

    def __init__(self, source: ImportSource, *, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(source.host, source.port, timeout=timeout, context=self.tls)
        self.source = source

    def connect(self) -> None:
        sock = _connect(self.source, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.source.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ImageRejected(
                _("The server's certificate is not valid for %(host)s.") % {"host": self.source.host}
            ) from exc


def import_image(
    *,
    actor,
    tenant: Tenant | None,
    name: str,
    url: str,
    disk_format: str,
    ip: str | None = None,
    **options: Any,
) -> Image:
    check_import_url(url)
    with transaction.atomic():
        image = create_image(
            actor=actor,
            tenant=tenant,
            name=name,
            disk_format=disk_format,
            source_url=url,
            status=Image.Status.QUEUED,
            ip=ip,
            **options,
        )
        operations.create_operation(
            kind="image.import", target=image, tenant=tenant, user=actor, task=import_image_task
        )
    return image


def download_image(*, operation_id: int) -> None:
    """Worker side of an import: stream the URL into the image store within the quota, then process it."""
    operation = operations.begin(operation_id=operation_id)
    if operation is None:
        return
    image = Image.objects.get(pk=operation.target_id)
    pace = _Pace()
    try:
        try:
            received = _download(image, operation, pace)
        finally:
            pace.stop()
    except SoftTimeLimitExceeded:
        _fail_download(image, operation, time_limit_exceeded(settings.LABCLOUD_IMAGE_IMPORT_TASK_TIME_LIMIT))
        return
    except (ImageRejected, ServiceError) as exc:
        _fail_download(image, operation, pace.failure() or exc.message)
        return
    except Exception:  # anything else (network, disk, HTTP protocol): fail cleanly, never leave it running
        reason = pace.failure()
        if not reason:
            log.exception("import of image %s failed", image.pk)
        _fail_download(image, operation, reason or _("The download failed."))
        return
    Image.objects.filter(pk=image.pk).update(size=received, received_bytes=received)
    operations.succeed(operation=operation)
    with transaction.atomic():
        queue_processing(Image.objects.get(pk=image.pk), actor=operation.user)


def _download(image: Image, operation: Operation, pace: _Pace) -> int:
    """Stream the image's URL into its partial file; the bytes received."""
    ensure_store()
    source = resolve_import_url(image.source_url)  # again: DNS may answer differently now
    connection_class = _PinnedHTTPSConnection if source.scheme == "https" else _PinnedHTTPConnection
    conn = connection_class(source, timeout=min(30.0, max(1.0, pace.remaining())))
    pace.start()
    try:
        conn.connect()
        pace.watch(conn.sock)
        conn.request("GET", source.target, headers={"User-Agent": "labcloud-image-import"})
        response = conn.getresponse()
        if 300 <= response.status < 400:
            # Not followed: the target would escape the checks above.
            raise ImageRejected(_("The server redirected the download; give the final URL."))
        if response.status >= 400:
            raise ImageRejected(_("The server answered HTTP %(code)d.") % {"code": response.status})
        announced = int(response.headers.get("Content-Length") or 0)
        limit = _download_budget(image, announced)
        operations.progress(operation=operation, percent=1, message=_("Downloading"))
        received = 0
        last_percent = -1
        with open(image.partial_path, "wb") as fh:
            # read1: whatever has arrived (a plain read waits for a whole chunk, however slowly it trickles in).
            while chunk := response.read1(COPY_CHUNK):
                received += len(chunk)
                pace.received = received
                if received > limit:
                    raise ImageRejected(
                        _("The download exceeds %(limit)s (upload limit or image storage quota).")
                        % {"limit": filesizeformat(limit)}
                    )
                fh.write(chunk)
                percent = received * 60 // announced if announced else 0
                if percent != last_percent:
                    last_percent = percent
                    operations.progress(operation=operation, percent=percent)
        if pace.failure():
            raise ImageRejected(pace.failure())
        if announced and received != announced:
            raise ImageRejected(
                _("The download ended after %(received)d of %(announced)d bytes.")
                % {"received": received, "announced": announced}
            )
    finally:
        conn.close()
    return received


class _Pace:
    """The deadline and the minimum rate of one download, watched from a thread.

    Past ``LABCLOUD_IMAGE_IMPORT_TIMEOUT`` seconds, or when a window of ``LABCLOUD_IMAGE_IMPORT_RATE_WINDOW``
    seconds brought fewer than ``LABCLOUD_IMAGE_IMPORT_MIN_RATE`` bytes per second (waiting for the answer
    counts), the thread shuts the connection down: a read blocked on a trickling server returns at once,
    and ``failure()`` says why.
    """

    def __init__(self) -> None:
        self.deadline = settings.LABCLOUD_IMAGE_IMPORT_TIMEOUT
        self.min_rate = settings.LABCLOUD_IMAGE_IMPORT_MIN_RATE
        self.window = settings.LABCLOUD_IMAGE_IMPORT_RATE_WINDOW
        self.received = 0  # written by the download, read by the watcher
        self._started = time.monotonic()
        self._verdict = ""  # "slow" or "late", set once by the watcher
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="import-pace", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def watch(self, sock: socket.socket) -> None:
        self._sock = sock
        if self._verdict:
            self._shut()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def remaining(self) -> float:
        return self._started + self.deadline - time.monotonic()

    def failure(self) -> str:
        """Why the download was cut off ("" if it was not), in the caller's language."""
        if self._verdict == "late":
            return _("The download took too long: it did not finish within %(duration)s.") % {
                "duration": duration_text(self.deadline)
            }
        if self._verdict == "slow":
            return _("The download was too slow: less than %(rate)s per second over %(duration)s.") % {
                "rate": filesizeformat(self.min_rate),
                "duration": duration_text(self.window),
            }
        return ""

    def _watch(self) -> None:
        tick = max(0.05, min(1.0, self.window / 4, self.deadline / 20))
        window_start, window_bytes = self._started, 0
        while not self._stop.wait(tick):
            now = time.monotonic()
            if now - self._started >= self.deadline:
                self._verdict = "late"
            elif now - window_start >= self.window:
                if self.received - window_bytes < self.min_rate * (now - window_start):
                    self._verdict = "slow"
                window_start, window_bytes = now, self.received
            if self._verdict:
                self._shut()
                return

    def _shut(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS: it unblocks the reader without touching TLS state.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _fail_download(image: Image, operation: Operation, reason: str) -> None:
    reject(image, reason)
    operations.fail(operation=operation, error=reason)


def _download_budget(image: Image, announced: int) -> int:
    """Bytes the download may take: the upload limit, and the tenant's remaining storage quota.

    The budget is reserved at once (written as the image's size under the quota lock), so
    concurrent imports cannot each count on the same remaining quota.
    """
    limit = settings.LABCLOUD_IMAGE_MAX_UPLOAD_BYTES
    if announced:
        check_size(announced)
    if image.tenant is None:
        return min(limit, announced) if announced else limit
    with transaction.atomic():
        if announced:
            reserve_quota(tenant=image.tenant, request={"image_storage_gib": gib(announced)})
            budget = min(limit, announced)
        else:
            quota = reserve_quota(tenant=image.tenant, request={})
            if quota.image_storage_gib < 0:
                budget = limit
            else:
                used = tenant_usage(tenant_ids=[image.tenant_id])[image.tenant_id]["image_storage_gib"]
                budget = min(limit, max(0, quota.image_storage_gib - used) * GIB)
        Image.objects.filter(pk=image.pk).update(size=budget)
    return budget
