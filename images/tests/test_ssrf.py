"""URL imports cannot be aimed at the portal's machine, the lab's private network or metadata services."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from images.imports import check_import_url, import_image
from images.models import Image
from portal.services import ServiceError


@pytest.fixture
def no_allow_list(settings):
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/admin/",
        "http://localhost/x.qcow2",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/disk.img",
        "http://192.168.0.1/disk.img",
        "http://[::1]/disk.img",
        "http://0.0.0.0/disk.img",
    ],
)
def test_local_and_private_addresses_are_refused(actors, no_allow_list, url):
    with pytest.raises(ServiceError, match="local or private"):
        import_image(actor=actors.member, tenant=actors.tenant, name="x", url=url, disk_format="raw")
    assert not Image.objects.exists()


def test_unresolvable_hosts_are_refused(no_allow_list):
    with pytest.raises(ServiceError, match="cannot be resolved"):
        check_import_url("http://no-such-host.invalid/disk.img")


def test_a_named_host_outside_the_allow_list_is_refused(settings):
    settings.LABCLOUD_IMAGE_IMPORT_ALLOWED_HOSTS = ["mirror.lab.test"]
    with pytest.raises(ServiceError, match="not allowed"):
        check_import_url("http://127.0.0.1/disk.img")
    assert check_import_url("http://mirror.lab.test/disk.img")


class Redirector(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_redirects_are_not_followed(actors, eager_tasks, django_capture_on_commit_callbacks):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Redirector))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/disk.img"
        with django_capture_on_commit_callbacks(execute=True):
            image = import_image(actor=actors.member, tenant=actors.tenant, name="r", url=url, disk_format="raw")
    finally:
        server.shutdown()
        server.server_close()
    image.refresh_from_db()
    assert image.status == Image.Status.FAILED
    assert "redirected" in image.failure_reason
