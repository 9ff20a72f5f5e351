"""Issue #17 (7g): an encrypted (LUKS) qcow2 is refused with a clear reason, and no server path reaches the user.

The attacker's view: a member uploads a real LUKS-encrypted qcow2 (made by qemu-img with a secret)
through the API; the image fails, and what the member reads (the image's failure reason, the failed
operation's error, the dashboard page) says the image is encrypted and names no file or folder of the
server. The same goes for a qcow2 whose header qemu-img cannot read.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from django.urls import reverse

from images.inspection import ImageRejected, inspect_file
from images.tests.test_api_images import announce, detail, put_chunk

MIB = 1024**2
# Any absolute path of this machine (/tmp/…, /var/…, /work/…, the image store) in a text shown to users.
SERVER_PATH = re.compile(r"(?<![\w.])/(?:tmp|var|work|srv|home|root|usr|etc|run|opt)\b|\.part\b|incoming")


def make_luks_qcow2(path) -> None:
    """qemu-img's LUKS set-up times PBKDF2 first and gives up with "Unable to get accurate CPU usage" when its
    first round took under a millisecond of CPU (fast machines, now and then): that known glitch is retried,
    a bounded number of times; any other failure fails at once."""
    argv = [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=lctest-passphrase",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        str(path),
        "16M",
    ]
    for _attempt in range(10):
        made = subprocess.run(argv, capture_output=True, text=True)
        if made.returncode == 0:
            return
        assert "Unable to get accurate CPU usage" in made.stderr, made.stderr
        path.unlink(missing_ok=True)
    pytest.fail(f"qemu-img could not make a LUKS image: {made.stderr}")


@pytest.fixture(scope="module")
def luks_qcow2(tmp_path_factory):
    path = tmp_path_factory.mktemp("luks") / "encrypted.qcow2"
    make_luks_qcow2(path)
    info = subprocess.run(["qemu-img", "info", "-f", "qcow2", str(path)], check=True, capture_output=True, text=True)
    assert "encrypted: yes" in info.stdout
    return path


def upload(actors, path, eager_tasks, django_capture_on_commit_callbacks) -> dict:
    client = actors.client("member")
    image = announce(client, actors.tenant, path, "qcow2", name="secret-disk")
    with django_capture_on_commit_callbacks(execute=True):
        response = put_chunk(client, image["id"], path.read_bytes())
    assert response.status_code == 202, response.content
    return client.get(detail(image["id"])).json()


def test_luks_encrypted_qcow2_is_refused_clearly_without_server_paths(
    actors, luks_qcow2, eager_tasks, django_capture_on_commit_callbacks
):
    body = upload(actors, luks_qcow2, eager_tasks, django_capture_on_commit_callbacks)
    assert body["status"] == "failed"
    reason = body["failure_reason"]
    assert "encrypted" in reason.lower(), reason
    assert not SERVER_PATH.search(reason), reason
    client = actors.client("member")
    ops = client.get("/api/v1/operations/", {"target_type": "images.image", "target_id": body["id"]}).json()
    [operation] = ops["results"]
    assert operation["state"] == "failed" and operation["error"] == reason
    page = actors.client("member", api=False).get(reverse("image_detail", args=[body["id"]]))
    assert page.status_code == 200 and not SERVER_PATH.search(page.content.decode())


def test_the_inspection_says_encrypted_in_both_languages(luks_qcow2):
    from django.utils import translation

    with pytest.raises(ImageRejected) as refused:
        inspect_file(luks_qcow2, declared_format="qcow2")
    assert "encrypted" in refused.value.message.lower() and str(luks_qcow2.parent) not in refused.value.message
    with translation.override("zh-hans"), pytest.raises(ImageRejected) as refused_zh:
        inspect_file(luks_qcow2, declared_format="qcow2")
    assert "加密" in refused_zh.value.message


def test_qemu_img_errors_never_show_the_server_path(
    actors, tmp_path, settings, eager_tasks, django_capture_on_commit_callbacks
):
    """A qcow2 the format inspector lets through but qemu-img refuses (a cluster size of 2^8 in its header):
    the reason keeps what qemu-img said, without the path of the file in the image store."""
    bad = tmp_path / "bad.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(bad), "8M"], check=True)
    header = bytearray(bad.read_bytes())
    header[20:24] = (8).to_bytes(4, "big")  # cluster_bits
    bad.write_bytes(bytes(header))
    body = upload(actors, bad, eager_tasks, django_capture_on_commit_callbacks)
    assert body["status"] == "failed"
    reason = body["failure_reason"]
    assert "cluster size" in reason.lower(), reason  # still useful
    assert not SERVER_PATH.search(reason) and str(settings.LABCLOUD_IMAGE_STORE) not in reason, reason


def test_qemu_img_errors_name_no_file_of_the_server(tmp_path):
    """What capture and conversion report (an instance's disk that cannot be read) names no path either."""
    from images import qemu

    missing = tmp_path / "lctest-instance-root.qcow2"
    with pytest.raises(qemu.QemuImgError) as failed:
        qemu.info(missing, fmt="qcow2")
    assert "No such file" in str(failed.value) and not SERVER_PATH.search(str(failed.value)), str(failed.value)
    with pytest.raises(qemu.QemuImgError) as failed:
        qemu.convert(missing, tmp_path / "out.qcow2", source_fmt="qcow2")
    assert not SERVER_PATH.search(str(failed.value)) and "lctest-instance-root" not in str(failed.value)
