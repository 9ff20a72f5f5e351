"""OpenStack clouds without a cloud: placement rules, refusals, credentials at rest, console URLs, pages.

What needs a real cloud (launch, power, sync…) is in test_openstack_portal.py against the devcloud.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.backends.base import BackendError
from portal.services import ConflictError
from vms import lifecycle
from vms.compute.openstack import login
from vms.compute.openstack.adapter import websocket_url_of
from vms.models import Flavor, Host, Instance, PlacementRule
from vms.scheduler import NoValidHost, place, placement_target

pytestmark = pytest.mark.django_db


@pytest.fixture
def hosts():
    libvirt_host = Host.objects.create(
        name="kvm1",
        uri="test:///default",
        state=Host.State.UP,
        cpus=8,
        memory_mib=16384,
        pool_capacity=100 * 1024**3,
        pool_available=100 * 1024**3,
    )
    cloud_host = Host.objects.create(
        name="cloud1", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:9/v3", state=Host.State.UP
    )
    return libvirt_host, cloud_host


def test_most_specific_placement_rule_wins(hosts, make_tenant):
    libvirt_host, cloud_host = hosts
    other_cloud = Host.objects.create(name="cloud2", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:9/v3")
    tenant, other = make_tenant("rules-a"), make_tenant("rules-b")
    small = Flavor.objects.create(name="r.small", vcpus=1, ram_mib=128, disk_gib=1)
    big = Flavor.objects.create(name="r.big", vcpus=2, ram_mib=256, disk_gib=1)
    assert placement_target(tenant=tenant, flavor=small) is None  # no rule: the libvirt scheduler

    PlacementRule.objects.create(tenant=tenant, host=cloud_host)
    PlacementRule.objects.create(flavor=big, host=libvirt_host)
    PlacementRule.objects.create(tenant=tenant, flavor=big, host=other_cloud)
    assert placement_target(tenant=tenant, flavor=small) == cloud_host  # tenant rule
    assert placement_target(tenant=other, flavor=big) == libvirt_host  # flavor rule
    assert placement_target(tenant=tenant, flavor=big) == other_cloud  # tenant + flavor beats both
    assert placement_target(tenant=other, flavor=small) is None


def test_placement_rule_needs_a_tenant_or_a_flavor(hosts):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        PlacementRule(host=hosts[1]).full_clean()


def test_scheduler_sends_to_a_cloud_unless_it_is_down_or_disabled(hosts):
    _, cloud_host = hosts
    assert place(count=2, vcpus=64, ram_mib=10**6, disk_gib=10**4, hosts=[cloud_host]) == [cloud_host] * 2
    Host.objects.filter(pk=cloud_host.pk).update(state=Host.State.DOWN, state_reason="Keystone does not answer")
    with pytest.raises(NoValidHost, match="cloud down") as refused:
        place(count=1, vcpus=1, ram_mib=64, disk_gib=1, hosts=[cloud_host])
    assert "Keystone" not in str(refused.value)  # the cloud's own error is for admins, not for tenants
    Host.objects.filter(pk=cloud_host.pk).update(state=Host.State.UP, enabled=False)
    with pytest.raises(NoValidHost, match="disabled"):
        place(count=1, vcpus=1, ram_mib=64, disk_gib=1, hosts=[cloud_host])
    # the default scheduler never picks a cloud
    assert place(count=1, vcpus=1, ram_mib=64, disk_gib=1)[0].kind == Host.Kind.LIBVIRT


def test_launch_to_a_cloud_refuses_iso_and_portal_networks(hosts, make_tenant, make_user, tmp_path, settings):
    from vms.tests.conftest import active_image

    _, cloud_host = hosts
    settings.LABCLOUD_IMAGE_STORE = tmp_path
    tenant = make_tenant("rules-iso", instances=5, vcpus=5, ram_mib=4096, disk_gib=10)
    user = make_user("rules-user")
    tenant.memberships.create(user=user, role="member")
    source = tmp_path / "src.iso"
    source.write_bytes(b"\0" * 4096)
    iso = active_image(tenant=tenant, source=source, name="installer", kind="iso", disk_format="iso")
    flavor = Flavor.objects.create(name="r.f", vcpus=1, ram_mib=128, disk_gib=1)
    PlacementRule.objects.create(tenant=tenant, host=cloud_host)
    with pytest.raises(lifecycle.ServiceError, match="cannot install from an ISO"):
        lifecycle.launch_instances(actor=user, tenant=tenant, name="x", flavor=flavor, image=iso)
    assert not Instance.objects.filter(tenant=tenant).exists()  # nothing half-created


def test_cloud_instances_refuse_what_the_cloud_cannot_do(hosts, make_tenant, make_user):
    _, cloud_host = hosts
    tenant = make_tenant("rules-refuse")
    user = make_user("rules-refuse-user")
    flavor = Flavor.objects.create(name="r.g", vcpus=1, ram_mib=128, disk_gib=1)
    instance = Instance.objects.create(
        tenant=tenant, owner=user, name="vm", flavor=flavor, vcpus=1, ram_mib=128, disk_gib=1,
        host=cloud_host, state=Instance.State.SHUTOFF, cloud_id="abc",
    )  # fmt: skip
    for call in (
        lambda: lifecycle.attach_disk(actor=user, instance=instance, size_gib=1),
        lambda: lifecycle.set_resources(actor=user, instance=instance, vcpus=1, ram_mib=64),
        lambda: lifecycle.request_action(actor=user, instance=instance, action="finish_install"),
        lambda: lifecycle.capture_instance(actor=user, instance=instance, name="img"),
    ):
        with pytest.raises(ConflictError, match="runs on an OpenStack cloud") as refused:
            call()
        assert "cloud1" not in str(refused.value)  # members are not told the cloud's name (issue #17, 7d)
    instance.refresh_from_db()
    assert instance.task == "" and not instance.disks.exists()


def test_credentials_are_encrypted_at_rest_and_a_changed_key_is_a_clear_error(hosts, settings):
    _, cloud_host = hosts
    cloud_host.credentials = login.encrypt_credentials(
        {"username": "portal", "password": "s3cret-PW", "project_name": "labcloud", "ignored": "x"}
    )
    cloud_host.save()
    stored = Host.objects.values_list("credentials", flat=True).get(pk=cloud_host.pk)
    assert "s3cret" not in stored and "portal" not in stored
    assert login.decrypt_credentials(cloud_host) == {
        "username": "portal",
        "password": "s3cret-PW",
        "project_name": "labcloud",
    }
    assert login.credentials_summary(cloud_host) == {"username": "portal", "project_name": "labcloud"}
    auth = login.auth_for(cloud_host)
    assert auth.password == "s3cret-PW" and "s3cret" not in repr(auth)
    settings.LABCLOUD_CREDENTIALS_KEY = "0" * 43 + "="  # another key
    with pytest.raises(BackendError, match="cannot be decrypted"):
        login.decrypt_credentials(cloud_host)


def test_clouds_yaml_cloud_name(hosts, tmp_path, monkeypatch):
    _, cloud_host = hosts
    config = tmp_path / "clouds.yaml"
    config.write_text(
        "clouds:\n  lab:\n    region_name: RegionTwo\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n"
        "      username: u\n      password: p\n      project_name: pr\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    cloud_host.auth_url, cloud_host.cloud_name = "", "lab"
    auth = login.auth_for(cloud_host)
    assert (auth.auth_url, auth.username, auth.project_name, auth.region_name) == (
        "http://127.0.0.1:9/v3",
        "u",
        "pr",
        "RegionTwo",
    )
    cloud_host.cloud_name = "nowhere"
    with pytest.raises(BackendError, match=r"not in clouds\.yaml"):
        login.auth_for(cloud_host)


def test_clouds_yaml_ids_instead_of_names(hosts, tmp_path, monkeypatch):
    """An RC-file style entry: the project and the domains by id (``domain_id`` is the shorthand for both)."""
    _, cloud_host = hosts
    config = tmp_path / "clouds.yaml"
    config.write_text(
        "clouds:\n  lab:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n      username: u\n      password: p\n"
        "      project_id: 0123abcd\n      domain_id: dom-1\n"
        "  lab2:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n      username: u\n      password: p\n"
        "      project_name: pr\n      project_domain_id: dom-2\n      user_domain_name: Users\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(config))
    cloud_host.auth_url, cloud_host.cloud_name = "", "lab"
    auth = login.auth_for(cloud_host)
    assert (auth.project_id, auth.project_name, auth.user_domain_id, auth.project_domain_id) == (
        "0123abcd",
        None,
        "dom-1",
        "dom-1",
    )
    cloud_host.cloud_name = "lab2"
    auth = login.auth_for(cloud_host)
    assert (auth.project_id, auth.project_name, auth.project_domain_id, auth.user_domain_id) == (
        None,
        "pr",
        "dom-2",
        None,
    )
    assert auth.user_domain_name == "Users"
    # a project name stored in the portal replaces clouds.yaml's project id (what the portal stores wins)
    cloud_host.cloud_name = "lab"
    cloud_host.credentials = login.encrypt_credentials({"project_name": "mine"})
    auth = login.auth_for(cloud_host)
    assert (auth.project_id, auth.project_name, auth.username) == (None, "mine", "u")


def test_verify_marks_an_unreachable_cloud_down(hosts):
    _, cloud_host = hosts
    cloud_host.credentials = login.encrypt_credentials({"username": "u", "password": "p", "project_name": "pr"})
    cloud_host.save()
    login.verify_cloud(host=cloud_host)
    cloud_host.refresh_from_db()
    assert cloud_host.state == Host.State.DOWN and "127.0.0.1:9" in cloud_host.state_reason


@pytest.mark.parametrize(
    ("nova_url", "websocket"),
    [
        ("http://127.0.0.1:6080/vnc_lite.html?path=%3Ftoken%3Dabc-123", "ws://127.0.0.1:6080/?token=abc-123"),
        ("https://console.example.org/vnc_auto.html?token=t0k", "wss://console.example.org/?token=t0k"),
        (
            "https://cloud.example.org/novnc/vnc_lite.html?path=novnc%2Fwebsockify%3Ftoken%3Dxyz",
            "wss://cloud.example.org/novnc/websockify?token=xyz",
        ),
    ],
)
def test_websocket_url_of_nova_console_urls(nova_url, websocket):
    assert websocket_url_of(nova_url) == websocket


def test_nova_console_url_without_token_is_refused():
    with pytest.raises(ConflictError, match="without a token"):
        websocket_url_of("http://127.0.0.1:6080/vnc_lite.html")


def test_pages_with_a_cloud_host_render(hosts, actors, client, settings):
    settings.METRICS_TOKEN = "scrape-token-for-test"
    client.force_login(actors.cloud_admin)
    for name in ("overview", "hosts"):
        reply = client.get(reverse(name))
        assert reply.status_code == 200 and "cloud1" in reply.content.decode()
    metrics = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-for-test")
    assert metrics.status_code == 200 and 'host="cloud1"' in metrics.content.decode()


def test_launch_form_says_where_a_tenants_instances_go(hosts, actors, client):
    _, cloud_host = hosts
    client.force_login(actors.member)  # the member's only tenant is the active one
    assert 'id="lc-launch-placement"' not in client.get(reverse("instance_launch")).content.decode()
    PlacementRule.objects.create(tenant=actors.tenant, host=cloud_host)
    page = client.get(reverse("instance_launch")).content.decode()
    assert 'id="lc-launch-placement"' in page and "an OpenStack cloud" in page and "installer ISOs" in page
    assert "cloud1" not in page  # which cloud is for cloud admins (issue #17, 7d)


def test_one_rule_per_tenant_per_flavor_and_per_pair_in_the_database(hosts, make_tenant):
    from django.db import IntegrityError, transaction

    _, cloud_host = hosts
    tenant = make_tenant("rules-unique")
    flavor = Flavor.objects.create(name="r.u", vcpus=1, ram_mib=128, disk_gib=1)
    for fields in ({"tenant": tenant}, {"flavor": flavor}, {"tenant": tenant, "flavor": flavor}):
        PlacementRule.objects.create(host=cloud_host, **fields)
        with pytest.raises(IntegrityError), transaction.atomic():
            PlacementRule.objects.create(host=cloud_host, **fields)
    assert PlacementRule.objects.count() == 3


def test_sharing_changes_queue_a_sync_of_the_cloud_copies(hosts, make_tenant, django_capture_on_commit_callbacks):
    """A share that stops being accepted (rejected, withdrawn, removed with ``shared_with``, or with its tenant)
    queues one sync of the image's Glance copies after commit; a new share, a pending one answered or withdrawn,
    an acceptance (the project joins at its first launch), or an image without a copy queue nothing."""
    from images.models import Image, ImageReplica, ImageShare
    from images.sharing import accept_share, reject_share, share_image, withdraw_share
    from portal.factories import share_image_with
    from portal.models import Tenant

    _, cloud_host = hosts
    owner, b, c, d = (make_tenant(name) for name in ("own", "tb", "tc", "td"))
    image = Image.objects.create(tenant=owner, name="img", visibility=Image.Visibility.SHARED)
    elsewhere = Image.objects.create(tenant=owner, name="no-copy", visibility=Image.Visibility.SHARED)
    ImageReplica.objects.create(image=image, host=cloud_host, cloud_image_id="g1", state=ImageReplica.State.READY)

    def queued(change) -> int:
        with django_capture_on_commit_callbacks() as callbacks:
            change()
        return len(callbacks)

    pending = share_image(actor=None, image=image, reference="tb")
    assert queued(lambda: accept_share(actor=None, share=pending)) == 0  # its project joins at its first launch
    assert queued(lambda: reject_share(actor=None, share=pending)) == 1  # removed by its tenant: leaves at once
    assert queued(lambda: withdraw_share(actor=None, share=pending)) == 0  # rejected already: no member
    offered = share_image(actor=None, image=image, reference="nowhere")
    assert queued(lambda: withdraw_share(actor=None, share=offered)) == 0  # never named a tenant
    assert queued(lambda: share_image_with(image, b, c, d)) == 0
    assert queued(lambda: share_image_with(elsewhere, b, c)) == 0
    assert queued(lambda: image.shared_with.remove(b)) == 1
    assert queued(lambda: elsewhere.shared_with.remove(b)) == 0  # no copy in a cloud
    assert queued(lambda: c.shared_images.clear()) == 1  # reverse: the images c was on
    assert queued(lambda: image.shared_with.clear()) == 1  # d
    assert queued(lambda: image.shared_with.clear()) == 0  # nothing left to remove
    share_image_with(image, d)
    assert queued(lambda: Tenant.objects.get(pk=d.pk).delete()) == 1  # its shares go with it
    share_image_with(image, b, status=ImageShare.Status.PENDING)
    assert queued(lambda: image.shared_with.remove(b)) == 0  # pending: never a member
    share_image_with(image, b)
    Image.objects.filter(pk=image.pk).update(visibility=Image.Visibility.PRIVATE)
    image.refresh_from_db()
    assert queued(lambda: image.shared_with.remove(b)) == 0  # not shared: its save aligns the copies
