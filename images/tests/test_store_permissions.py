"""Issue #17 (7a): the image store (var/images by default; anywhere with LABCLOUD_IMAGE_STORE) is private.

As another local user would try: an image uploaded through the API into a store whose parent every
user may enter, then read as ``nobody`` (see portal/tests/test_var_permissions.py).
"""

from __future__ import annotations

import os

import pytest

from images.models import Image
from images.tests.test_api_images import announce, detail, put_chunk
from portal.tests.test_var_permissions import as_nobody, mode, open_folder  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root (runuser)"),
]
MIB = 1024**2


def test_nobody_can_read_an_uploaded_image(
    actors,
    open_folder,  # noqa: F811 - the fixture
    settings,
    eager_tasks,
    django_capture_on_commit_callbacks,
):
    """The image store (var/images by default; anywhere with LABCLOUD_IMAGE_STORE) is private too."""
    settings.LABCLOUD_IMAGE_STORE = open_folder / "images"
    source = open_folder / "upload.raw"
    with open(source, "wb") as fh:
        fh.truncate(4 * MIB)
        fh.write(b"LCTEST-PRIVATE-DISK" * 100)
    client = actors.client("member")
    created = announce(client, actors.tenant, source, "raw", name="private-disk")
    with django_capture_on_commit_callbacks(execute=True):
        assert put_chunk(client, created["id"], source.read_bytes()).status_code == 202
    assert client.get(detail(created["id"])).json()["status"] == "active"
    stored = Image.objects.get(pk=created["id"]).path

    refused = as_nobody("cat", str(stored))
    assert refused.returncode != 0 and b"LCTEST-PRIVATE-DISK" not in refused.stdout
    assert as_nobody("ls", str(settings.LABCLOUD_IMAGE_STORE)).returncode != 0
    assert mode(settings.LABCLOUD_IMAGE_STORE) == 0o700 and mode(settings.LABCLOUD_IMAGE_STORE / "incoming") == 0o700
    assert mode(stored) == 0o600
