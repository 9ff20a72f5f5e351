"""The dashboard in Simplified Chinese leaves no English behind (#19): the pages a member, a tenant admin and a
cloud admin open (every GET page of the dashboard; the others are forms posted from them), with data on them
(an instance with its operations and a snapshot, an image, a keypair, a network), read as a browser shows them
— text, titles, placeholders, labels; not scripts, styles or code samples.

A word of Latin letters fails the test unless it is a name the test gave its data, a unit, or a technical name
a Chinese page keeps as it is (API, SSH, vCPU, qcow2, cloud-init…): ``KEPT``.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from vms import lifecycle
from vms.keypairs import import_keypair
from vms.models import Flavor, Host, Instance, Network, Operation, SecurityGroup, Snapshot
from vms.tests.conftest import fake_ssh_key
from vms.tests.views.test_instances import make_image

pytestmark = pytest.mark.django_db

# Written as a Chinese page writes them: units, protocols, formats, products, key names, technical names,
# the language switcher's "English", and the example identifiers of the forms' placeholders.
KEPT = {
    *[
        "API",
        "CIDR",
        "TCP",
        "UDP",
        "ICMP",
        "REST",
        "JSON",
        "URL",
        "HTTP",
        "HTTPS",
        "WebSocket",
        "SSH",
        "RSA",
        "ECDSA",
        "SHA-256",
        "UUID",
        "MAC",
        "DHCP",
        "NAT",
        "VNC",
        "CPU",
        "RAM",
        "ISO",
        "CI",
    ],
    *[
        "GiB",
        "MiB",
        "KiB",
        "TiB",
        "GB",
        "MB",
        "KB",
        "TB",
        "vCPU",
        "vCPUs",
        "qcow2",
        "raw",
        "VDI",
        "VHD",
        "VMDK",
        "VMware",
        "VirtualBox",
        "Hyper-V",
        "Azure",
    ],
    *[
        "Windows",
        "Linux",
        "Debian",
        "QEMU",
        "TCG",
        "JavaScript",
        "noVNC",
        "OpenStack",
        "libvirt",
        "labcloud",
        "English",
    ],
    *["cloud-init", "user-data", "cloud-config", "ssh-ed25519", "ed25519", "ecdsa", "AAAA", "pub"],
    *["Esc", "Tab", "Print", "Screen", "Super"],
    *["lab-key", "physics-lab", "before-upgrade", "trixie"],
}
KEY_COMBINATION = re.compile(r"(?:Ctrl|Alt|Shift)(?:-[A-Za-z0-9]+)+|F\d{1,2}")  # and function keys
# Addresses and user@host forms are data, not words.
NOT_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*|\S+@\S+")
WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*")
SKIPPED_TAGS = {"script", "style", "code", "pre", "kbd", "samp"}
READ_ATTRIBUTES = {"title", "placeholder", "aria-label", "alt"}


class _Reader(HTMLParser):
    """The words a reader sees: text outside scripts, styles and code, and the attributes read out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.seen: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag in SKIPPED_TAGS:
            self.depth += 1
        self.seen += [value for name, value in attrs if name in READ_ATTRIBUTES and value]

    def handle_endtag(self, tag) -> None:
        if tag in SKIPPED_TAGS:
            self.depth = max(0, self.depth - 1)

    def handle_data(self, data) -> None:
        if not self.depth:
            self.seen.append(data)


def english_words(html: str, kept: set[str]) -> set[str]:
    reader = _Reader()
    reader.feed(html)
    words = {word for text in reader.seen for word in WORD.findall(NOT_WORDS.sub(" ", text))}
    return {word for word in words if len(word) > 1 and word not in kept and not KEY_COMBINATION.fullmatch(word)}


@pytest.fixture
def lab(actors, make_user):
    """A tenant with what its pages show: an instance with finished operations and a snapshot, an image, a
    keypair, a network; a host for the cloud admin's pages."""
    Host.objects.create(
        name="node", uri="test:///default", state="up", cpus=8, memory_mib=16384, storage_pool="default",
        pool_capacity=500 * 1024**3, pool_available=400 * 1024**3,
    )  # fmt: skip
    flavor = Flavor.objects.create(name="small", vcpus=2, ram_mib=2048, disk_gib=10, is_public=True)
    image = make_image(actors.tenant, name="debian")
    result = lifecycle.launch_instances(
        actor=actors.member, tenant=actors.tenant, name="web", flavor=flavor, image=image
    )
    instance = result.instances[0]
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.RUNNING, task="")
    Operation.objects.filter(pk=result.operations[0].pk).update(
        state=Operation.State.SUCCEEDED, progress=100, message="Instance is running.", finished_at=timezone.now()
    )
    Operation.objects.create(
        kind="instance.reboot", tenant=actors.tenant, target_type="vms.instance", target_id=str(instance.pk),
        target_repr=instance.name, state=Operation.State.FAILED, finished_at=timezone.now(),
        error="The worker running this operation stopped %(n)d times.", error_args={"n": 3},
    )  # fmt: skip
    Snapshot.objects.create(
        tenant=actors.tenant, instance=instance, name="before", state="available", vcpus=2, ram_mib=2048, disk_gib=10
    )
    import_keypair(actor=actors.member, tenant=actors.tenant, name="laptop", public_key=fake_ssh_key("me"))
    Network.objects.create(name="lan", libvirt_name="lan", mode="isolated", cidr="192.168.150.0/24", is_public=True)
    names = {
        actors.tenant.name,
        actors.member.username,
        actors.tenant_admin.username,
        actors.cloud_admin.username,
        Instance.objects.get(pk=instance.pk).domain_name,
    }
    data = {word for name in names for word in WORD.findall(name)}
    return instance, image, {*KEPT, *data, "web", "debian", "before", "laptop", "lan", "node", "small", "default"}


def chinese(user) -> Client:
    client = Client()
    client.force_login(user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    return client


def test_no_english_on_the_chinese_pages(actors, lab):
    instance, image, kept = lab
    pages = {
        actors.member: [
            reverse("overview"),
            reverse("instances"),
            reverse("instance_detail", args=[instance.pk]),
            reverse("instance_console", args=[instance.pk]),
            reverse("instance_launch"),
            reverse("images"),
            reverse("image_detail", args=[image.pk]),
            reverse("image_upload"),
            reverse("image_import"),
            reverse("keypairs"),
            reverse("networks"),
            reverse("security_groups"),
            reverse("security_group_detail", args=[SecurityGroup.objects.get(tenant=actors.tenant, name="default").pk]),
            reverse("flavors"),
            reverse("tokens"),
            reverse("notifications"),
            reverse("notifications") + "?failed=1",
            reverse("notification_menu"),
        ],
        actors.tenant_admin: [reverse("members")],
        actors.cloud_admin: [
            reverse("overview"),
            reverse("hosts"),
            reverse("instance_detail", args=[instance.pk]),
            reverse("notifications"),
        ],
    }
    found = {}
    signed_out = Client()
    signed_out.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    words = english_words(signed_out.get(reverse("login")).content.decode(), kept)
    if words:
        found["(signed out) /login/"] = sorted(words)
    for user, urls in pages.items():
        client = chinese(user)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            words = english_words(response.content.decode(), kept)
            if words:
                found[f"{user.username} {url}"] = sorted(words)
    assert not found, "\n".join(f"{page}: {words}" for page, words in found.items())
