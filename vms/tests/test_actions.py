"""The action registry is the one truth: a button is shown (and enabled) exactly when the service accepts.

Walks host kind × {managed, installing from an ISO, adopted} × instance state (and busy) × every
action a member can request. For each instance it renders the instance page, reads whether the
action's button is there and enabled, then asks the service for the action inside a transaction
that is rolled back, and checks both agree; the API's ``allowed_actions`` and the live updates'
payload say the same. The libvirt host is the real ``qemu:///system`` with the test's private pool
(capture reads the root disk's file there); the cloud needs no cloud (every request is refused or
only recorded before anything reaches it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from django.db import transaction
from django.urls import reverse
from rest_framework.test import APIClient

from portal.models import Membership
from portal.services import ServiceError, set_quota
from vms import actions, lifecycle
from vms.compute.libvirt import root_volume
from vms.models import Flavor, Host, Instance, InstanceDisk, Snapshot
from vms.realtime import instance_payload

pytestmark = pytest.mark.django_db

STATES = [s for s in Instance.State.values if s != Instance.State.DELETING]
BUSY = "busy"  # a running instance with a task in progress
VARIANTS = ("managed", "installing", "adopted")


@dataclass
class Case:
    kind: str
    variant: str
    state: str
    instance: Instance
    disk: InstanceDisk
    snapshot: Snapshot

    def __str__(self) -> str:
        return f"{self.kind}/{self.variant}/{self.state}"


def _button(html: str, action: str) -> str | None:
    """The opening tag of the action's button on the page (None: not offered there)."""
    found = re.search(rf'<button[^>]*data-lc-action="{action}"[^>]*>', html)
    return found.group(0) if found else None


def shown_enabled(html: str, action: str) -> bool:
    tag = _button(html, action)
    return tag is not None and not re.search(r"\sdisabled(\s|>|=)", tag)


def request(case: Case, action: str, user, bigger: Flavor) -> bool:
    """Whether the service accepts ``action`` now; whatever it records is rolled back."""
    instance = Instance.objects.get(pk=case.instance.pk)
    calls = {
        "resize": lambda: lifecycle.resize_instance(actor=user, instance=instance, flavor=bigger),
        "set_resources": lambda: lifecycle.set_resources(actor=user, instance=instance, vcpus=2),
        "attach_disk": lambda: lifecycle.attach_disk(actor=user, instance=instance, size_gib=1),
        "detach_disk": lambda: lifecycle.detach_disk(actor=user, disk=InstanceDisk.objects.get(pk=case.disk.pk)),
        "snapshot_create": lambda: lifecycle.create_snapshot(actor=user, instance=instance, name="another"),
        "snapshot_revert": lambda: lifecycle.revert_snapshot(
            actor=user, snapshot=Snapshot.objects.get(pk=case.snapshot.pk)
        ),
        "snapshot_delete": lambda: lifecycle.delete_snapshot(
            actor=user, snapshot=Snapshot.objects.get(pk=case.snapshot.pk)
        ),
        "capture": lambda: lifecycle.capture_instance(actor=user, instance=instance, name=f"cap-{instance.pk}"),
        "delete": lambda: lifecycle.delete_instance(actor=user, instance=instance),
    }
    call = calls.get(action, lambda: lifecycle.request_action(actor=user, instance=instance, action=action))
    try:
        with transaction.atomic():
            call()
            transaction.set_rollback(True)
    except ServiceError:
        return False
    return True


@pytest.fixture
def world(actors, portal_host, settings):
    """One instance per kind × variant × state, each with an attached disk and an available snapshot."""
    settings.LABCLOUD_IMAGE_STORE.mkdir(exist_ok=True)
    cloud = Host.objects.create(
        name="lctest-cloud", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:9/v3", state=Host.State.UP
    )
    small = Flavor.objects.create(name="act.small", vcpus=2, ram_mib=128, disk_gib=1)
    bigger = Flavor.objects.create(name="act.big", vcpus=2, ram_mib=256, disk_gib=2)
    set_quota(
        actor=actors.cloud_admin,
        tenant=actors.tenant,
        limits={"instances": -1, "vcpus": -1, "ram_mib": -1, "disk_gib": -1, "snapshots": -1, "images": -1},
    )
    # Room for every growth request: refusals for capacity are not what this walk is about.
    Host.objects.filter(pk=portal_host.pk).update(
        cpus=1000, memory_mib=10**7, pool_capacity=10**15, pool_available=10**15
    )
    driver = portal_host.lctest.driver
    cases = []
    for kind, host in (("libvirt", portal_host), ("openstack", cloud)):
        for variant in VARIANTS:
            for state in [*STATES, BUSY]:
                instance = Instance.objects.create(
                    tenant=actors.tenant,
                    owner=actors.member,
                    name=f"{kind[:2]}-{variant}-{state}",
                    flavor=small,
                    vcpus=1,
                    ram_mib=128,
                    disk_gib=1,
                    host=host,
                    domain_name=f"{settings.LABCLOUD_DOMAIN_PREFIX}{kind}-{variant}-{state}",
                    cloud_id="server-1" if kind == "openstack" else "",
                    state=Instance.State.RUNNING if state == BUSY else state,
                    task="reboot" if state == BUSY else "",
                    adopted=variant == "adopted",
                    installing=variant == "installing",
                )
                disk = InstanceDisk.objects.create(
                    tenant=actors.tenant, instance=instance, size_gib=1, volume="d", target="vdb", attached=True
                )
                snapshot = Snapshot.objects.create(
                    tenant=actors.tenant,
                    instance=instance,
                    name="s1",
                    state=Snapshot.State.AVAILABLE,
                    vcpus=1,
                    ram_mib=128,
                    disk_gib=1,
                    disk_ids=[disk.pk],
                )
                if kind == "libvirt":  # capture reads the root disk: it must be there
                    driver.create_volume(portal_host.storage_pool, root_volume(instance), 1024**2)
                cases.append(Case(kind, variant, state, instance, disk, snapshot))
    return cases, bigger


def test_a_button_is_enabled_exactly_when_the_service_accepts(world, actors, client):
    cases, bigger = world
    client.force_login(actors.member)
    mismatches, accepted_somewhere = [], set()
    for case in cases:
        html = client.get(reverse("instance_detail", args=[case.instance.pk])).content.decode()
        allowed = set(actions.allowed_actions(Instance.objects.get(pk=case.instance.pk)))
        for action in actions.REQUESTABLE:
            accepted = request(case, action, actors.member, bigger)
            shown = shown_enabled(html, action)
            if accepted:
                accepted_somewhere.add((case.kind, action))
            if shown != accepted or (action in allowed) != accepted:
                mismatches.append(f"{case} {action}: button {shown}, allowed {action in allowed}, service {accepted}")
    assert not mismatches, "\n".join(mismatches)
    # The walk is not vacuous: each kind accepts what it can do, and only that.
    libvirt = {a for k, a in accepted_somewhere if k == "libvirt"}
    cloud = {a for k, a in accepted_somewhere if k == "openstack"}
    assert libvirt == set(actions.REQUESTABLE)
    assert cloud == set(actions.REQUESTABLE) - {
        "finish_install",
        "set_resources",
        "attach_disk",
        "detach_disk",
        "snapshot_revert",
        "capture",
    }


def test_what_is_not_offered_is_not_on_the_page(world, actors, client):
    cases, _bigger = world
    client.force_login(actors.member)
    for case in cases:
        html = client.get(reverse("instance_detail", args=[case.instance.pk])).content.decode()
        offered = set(actions.offered_actions(Instance.objects.get(pk=case.instance.pk)))
        for action in actions.REQUESTABLE:
            assert (_button(html, action) is not None) == (action in offered), f"{case} {action}"


def test_the_api_and_the_live_updates_carry_allowed_actions(world, actors):
    cases, _bigger = world
    api_client = APIClient()
    api_client.force_authenticate(actors.member)
    for case in cases:
        instance = Instance.objects.get(pk=case.instance.pk)
        expected = actions.allowed_actions(instance)
        body = api_client.get(f"/api/v1/instances/{instance.pk}/").json()
        assert body["allowed_actions"] == expected
        assert instance_payload(instance)["allowed_actions"] == expected


def test_adopted_instances_refuse_with_the_reason_and_clouds_say_it_is_a_cloud(world, actors):
    cases, bigger = world
    adopted = next(c for c in cases if c.kind == "libvirt" and c.variant == "adopted" and c.state == "shutoff")
    cloud = next(c for c in cases if c.kind == "openstack" and c.variant == "managed" and c.state == "shutoff")
    with pytest.raises(ServiceError, match="adopted"):
        lifecycle.resize_instance(actor=actors.member, instance=adopted.instance, flavor=bigger)
    with pytest.raises(ServiceError, match="runs on an OpenStack cloud") as refused:
        lifecycle.attach_disk(actor=actors.member, instance=cloud.instance, size_gib=1)
    assert "lctest-cloud" not in str(refused.value)  # the cloud's name is for cloud admins (issue #17, 7d)


def test_a_member_of_another_tenant_gets_nothing(world, actors, client):
    cases, _bigger = world
    Membership.objects.filter(user=actors.outsider).update(tenant=actors.other_tenant)
    client.force_login(actors.outsider)
    assert client.get(reverse("instance_detail", args=[cases[0].instance.pk])).status_code == 404


def test_every_label_of_the_registry_is_translated():
    """The labels are what members read on buttons, tasks, toasts and refusals: none stays English in zh-Hans."""
    from django.utils import translation

    missing = []
    for action in actions.ACTIONS.values():
        for field in ("verb", "progress", "noun", "button", "confirm"):
            label = getattr(action, field)
            if label is None:
                continue
            with translation.override("en"):
                english = str(label)
            with translation.override("zh-hans"):
                chinese = str(label)
            if chinese == english:
                missing.append(f"{action.name}.{field}: {english}")
    assert not missing, "untranslated:\n" + "\n".join(missing)
