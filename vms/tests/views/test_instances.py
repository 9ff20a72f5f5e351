"""Dashboard pages of instances and hosts: access matrix, what the pages show, what their forms do, query budgets.

No Celery task runs here: the services queue them on commit, and a test's transaction never commits.
So these tests check the rows, operations and quota the requests leave behind.
"""

from __future__ import annotations

import itertools
import re

import pytest
from django.test import Client
from django.urls import reverse

from images.models import Image
from portal.models import Quota
from portal.selectors import tenant_usage
from portal.testing import assert_access_matrix, assert_constant_queries
from vms import lifecycle
from vms.models import Flavor, Host, Instance, InstanceDisk, Operation, Snapshot

pytestmark = pytest.mark.django_db

LOGIN = 302  # anonymous users are sent to the login page
DONE = 302  # a POST answers with a redirect (and a message) whether the service agreed or refused
GIB = 1024**3
_serial = itertools.count()


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def host() -> Host:
    return Host.objects.create(
        name="node-1",
        uri="test:///default",
        state="up",
        cpus=8,
        memory_mib=16384,
        pool_capacity=100 * GIB,
        pool_available=90 * GIB,
    )


@pytest.fixture
def flavor() -> Flavor:
    return Flavor.objects.create(name="m1.small", vcpus=2, ram_mib=2048, disk_gib=10)


@pytest.fixture
def big_flavor() -> Flavor:
    return Flavor.objects.create(name="m1.large", vcpus=4, ram_mib=4096, disk_gib=20)


def make_image(tenant=None, **fields) -> Image:
    defaults = {
        "name": f"image-{next(_serial)}",
        "tenant": tenant,
        "disk_format": "qcow2",
        "stored_format": "qcow2",
        "status": Image.Status.ACTIVE,
        "size": 5 * 1024 * 1024,
        "virtual_size": 2 * GIB,
    }
    if tenant is None:
        defaults["visibility"] = Image.Visibility.PUBLIC
    defaults.update(fields)
    return Image.objects.create(**defaults)


@pytest.fixture
def image(actors) -> Image:
    return make_image(actors.tenant, name="debian-13")


@pytest.fixture
def launch(actors, host, flavor, image):
    """Launch instances of tenant A through the service (the rows a real launch leaves before the worker runs)."""

    def make(name: str = "vm", count: int = 1, state: str | None = None, **kwargs) -> list[Instance]:
        result = lifecycle.launch_instances(
            actor=actors.member, tenant=actors.tenant, name=name, flavor=flavor, image=image, count=count, **kwargs
        )
        ids = [i.pk for i in result.instances]
        if state is not None:
            Instance.objects.filter(pk__in=ids).update(state=state, task="")
        return list(Instance.objects.filter(pk__in=ids).order_by("name"))

    return make


@pytest.fixture
def running(launch) -> Instance:
    return launch("web", state=Instance.State.RUNNING)[0]


# ---------------------------------------------------------------- access matrix


@pytest.mark.parametrize("name", ["instances", "instance_launch"])
def test_list_and_launch_pages_need_login(actors, name):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse(name),
        expected={"anonymous": LOGIN, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )


def test_outsider_sees_an_empty_list_and_staff_see_all(actors, running):
    outsider = login(actors.outsider).get(reverse("instances"))
    assert running.name not in text(outsider.content.decode())
    assert "lc-instances-none" in outsider.content.decode()
    member = login(actors.member).get(reverse("instances")).content.decode()
    assert f'data-instance="{running.pk}"' in member
    staff = login(actors.cloud_admin).get(reverse("instances")).content.decode()
    assert f'data-instance="{running.pk}"' in staff
    assert "Tenant A" in text(staff)  # the tenant column
    assert "node-1" in text(staff)  # the host column
    assert "node-1" not in text(member)


def test_detail_is_for_the_tenant_and_staff(actors, running):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("instance_detail", args=[running.pk]),
        expected={"anonymous": LOGIN, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
        api=False,
    )


def _post_endpoints(instance: Instance, flavor: Flavor) -> list[tuple[str, dict]]:
    disk = InstanceDisk.objects.create(tenant=instance.tenant, instance=instance, size_gib=1, volume="v", attached=True)
    snapshot = Snapshot.objects.create(
        tenant=instance.tenant,
        instance=instance,
        name="s1",
        state=Snapshot.State.AVAILABLE,
        vcpus=instance.vcpus,
        ram_mib=instance.ram_mib,
        disk_gib=instance.disk_gib,
        disk_ids=[disk.pk],
    )
    pk = instance.pk
    return [
        (reverse("instance_action", args=[pk]), {"action": "reboot"}),
        (reverse("instance_resize", args=[pk]), {"flavor": flavor.pk}),
        (reverse("instance_resources", args=[pk]), {"vcpus": 1, "ram_mib": 1024}),
        (reverse("instance_disk_attach", args=[pk]), {"size_gib": 1}),
        (reverse("instance_disk_detach", args=[pk, disk.pk]), {}),
        (reverse("instance_snapshot_create", args=[pk]), {"snapshot-name": "snap"}),
        (reverse("instance_snapshot_revert", args=[pk, snapshot.pk]), {}),
        (reverse("instance_snapshot_delete", args=[pk, snapshot.pk]), {}),
        (reverse("instance_capture", args=[pk]), {"capture-name": "img"}),
        (reverse("instance_delete", args=[pk]), {}),
    ]


def test_every_post_is_for_the_tenant_and_staff(actors, running, big_flavor):
    for url, data in _post_endpoints(running, big_flavor):
        assert_access_matrix(
            actors,
            method="post",
            url=url,
            data=data,
            expected={"anonymous": LOGIN, "outsider": 404, "member": DONE, "tenant_admin": DONE, "cloud_admin": DONE},
            api=False,
        )


def test_outsider_posts_change_nothing(actors, running, big_flavor):
    for url, data in _post_endpoints(running, big_flavor):
        assert login(actors.outsider).post(url, data).status_code == 404
    login(actors.outsider).post(reverse("instance_bulk"), {"action": "stop", "instances": [running.pk]})
    running.refresh_from_db()
    assert running.task == "" and running.state == Instance.State.RUNNING
    assert not Operation.objects.filter(kind="instance.stop").exists()


def test_posts_need_csrf(actors, running):
    client = Client(enforce_csrf_checks=True)
    client.force_login(actors.member)
    response = client.post(reverse("instance_action", args=[running.pk]), {"action": "stop"})
    assert response.status_code == 403


def test_get_on_a_post_endpoint_is_refused(actors, running):
    assert login(actors.member).get(reverse("instance_action", args=[running.pk])).status_code == 405


@pytest.mark.parametrize("name", ["hosts"])
def test_hosts_page_is_for_staff_only(actors, host, name):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse(name),
        expected={"anonymous": LOGIN, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": 200},
        api=False,
    )
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("host_refresh", args=[host.pk]),
        data={},
        expected={"anonymous": LOGIN, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": DONE},
        api=False,
    )


def test_bulk_endpoint_matrix(actors, running):
    assert_access_matrix(
        actors,
        method="post",
        url=reverse("instance_bulk"),
        data={"action": "reboot", "instances": [running.pk]},
        expected={"anonymous": LOGIN, "outsider": DONE, "member": DONE, "tenant_admin": DONE, "cloud_admin": DONE},
        api=False,
    )


# ---------------------------------------------------------------- list


def test_list_shows_state_task_progress_and_filters(actors, launch):
    web = launch("web", state=Instance.State.RUNNING)[0]
    db = launch("db")[0]  # building, task "launch", with its queued operation
    op = Operation.objects.get(kind="instance.launch", target_id=str(db.pk))
    Operation.objects.filter(pk=op.pk).update(state=Operation.State.RUNNING, progress=42, message="Copying image")
    client = login(actors.member)
    html = client.get(reverse("instances")).content.decode()
    row = re.search(rf'<tr data-instance="{db.pk}".*?</tr>', html, re.S).group(0)
    assert 'data-state="building"' in row
    assert "Launching" in text(row) and "42%" in text(row) and "Copying image" in text(row)
    assert f'data-operation="{op.pk}"' in row
    assert 'id="lc-live-config"' in html and "vms/live.js" in html
    running_only = client.get(reverse("instances"), {"state": "running"}).content.decode()
    assert f'data-instance="{web.pk}"' in running_only and f'data-instance="{db.pk}"' not in running_only
    by_name = client.get(reverse("instances"), {"q": "DB"}).content.decode()
    assert f'data-instance="{db.pk}"' in by_name and f'data-instance="{web.pk}"' not in by_name


def test_list_sorts_by_its_column_headers(actors, launch):
    """?sort=<column> or -<column>; a header link sets ascending, then descending; filters and sorting keep
    each other; an unknown column keeps the default order (newest first)."""
    bravo = launch("bravo", state=Instance.State.RUNNING)[0]
    alpha = launch("alpha", state=Instance.State.SHUTOFF)[0]
    charlie = launch("charlie", state=Instance.State.RUNNING)[0]
    client = login(actors.member)

    def order(**params) -> list[int]:
        html = client.get(reverse("instances"), params).content.decode()
        return [int(pk) for pk in re.findall(r'<tr data-instance="(\d+)"', html)]

    assert order() == [charlie.pk, alpha.pk, bravo.pk]  # newest first
    assert order(sort="name") == [alpha.pk, bravo.pk, charlie.pk]
    assert order(sort="-name") == [charlie.pk, bravo.pk, alpha.pk]
    assert order(sort="state") == [bravo.pk, charlie.pk, alpha.pk]  # running before shutoff, then by name
    assert order(sort="-name", state="running") == [charlie.pk, bravo.pk]
    assert order(sort="host") == order() and order(sort="nonsense") == order()  # the host: cloud admins only
    html = client.get(reverse("instances"), {"sort": "name", "state": "running", "page": 1}).content.decode()
    name = re.search(r'<th scope="col" aria-sort="ascending"><a [^>]*href="([^"]+)"', html)
    assert name and "sort=-name" in name.group(1) and "state=running" in name.group(1) and "page=" not in name.group(1)
    assert re.search(r'<th scope="col" aria-sort="none"><a [^>]*href="[^"]*sort=state', html)
    assert '<input type="hidden" name="sort" value="name">' in html  # the filter form keeps the order
    staff = login(actors.cloud_admin).get(reverse("instances"), {"sort": "-host"}).content.decode()
    assert 'aria-sort="descending"' in staff


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_list_query_count_is_constant(actors, launch, role):
    client = login(actors.user(role))

    def make_rows(n: int) -> None:
        launch(f"batch-{next(_serial)}", count=n)

    Quota.objects.filter(tenant=actors.tenant).update(instances=-1, vcpus=-1, ram_mib=-1, disk_gib=-1)
    Host.objects.update(cpu_allocation_ratio=16, ram_allocation_ratio=16, disk_allocation_ratio=16)
    assert_constant_queries(make_rows, lambda: client.get(reverse("instances")), budget=14)
    assert_constant_queries(make_rows, lambda: client.get(reverse("instances"), {"sort": "-image"}), budget=14)


# ---------------------------------------------------------------- bulk actions


def test_bulk_action_runs_per_instance_and_reports_each_refusal(actors, launch):
    a, b = launch("a", count=2, state=Instance.State.RUNNING)
    c = launch("c", state=Instance.State.SHUTOFF)[0]
    response = login(actors.member).post(
        reverse("instance_bulk"), {"action": "stop", "instances": [a.pk, b.pk, c.pk]}, follow=True
    )
    notes = messages_of(response)
    assert any("c" in note and "power off" in note for note in notes), notes
    assert any("a-1, a-2" in note for note in notes), notes
    assert set(Instance.objects.filter(task="stop").values_list("name", flat=True)) == {"a-1", "a-2"}
    assert Operation.objects.filter(kind="instance.stop").count() == 2


def test_bulk_delete_marks_instances_deleting(actors, launch):
    a, b = launch("x", count=2, state=Instance.State.SHUTOFF)
    login(actors.tenant_admin).post(reverse("instance_bulk"), {"action": "delete", "instances": [a.pk, b.pk]})
    assert set(Instance.objects.filter(pk__in=[a.pk, b.pk]).values_list("state", flat=True)) == {"deleting"}
    assert Operation.objects.filter(kind="instance.delete").count() == 2


def test_bulk_without_selection_says_so(actors):
    response = login(actors.member).post(reverse("instance_bulk"), {"action": "stop"}, follow=True)
    assert any("at least one instance" in note for note in messages_of(response))


# ---------------------------------------------------------------- launch


def test_launch_form_lists_sources_flavors_and_quota_impact(actors, host, flavor, image):
    make_image(None, name="netinst", disk_format="iso", kind=Image.Kind.ISO, stored_format="", min_ram_mib=1024)
    make_image(actors.other_tenant, name="their-image")
    make_image(actors.tenant, name="still-uploading", status=Image.Status.UPLOADING)
    html = login(actors.member).get(reverse("instance_launch")).content.decode()
    page = text(html)
    assert "Disk images" in html and "Installer ISOs" in html
    assert "debian-13" in page and "netinst" in page and "Needs: RAM ≥ 1 GiB" in page
    # the source picker: a card (radio button) per source, with its OS icon and requirements
    assert f'id="lc-source-{image.pk}"' in html and "bi-tux" in html
    assert "No minimum requirements" in page
    assert "their-image" not in page and "still-uploading" not in page
    assert f'data-flavor="{flavor.pk}"' in html
    impact = re.search(r'id="lc-quota-impact".*?</ul>', html, re.S).group(0)
    # Tenant A's default quota: 10 instances, 20 vCPUs; the first flavor is preselected.
    assert "0 + 1 = 1 / 10" in text(impact)
    assert "0 + 2 = 2 / 20" in text(impact)
    assert "vms/launch.js" in html


def test_launch_creates_instances_operations_and_uses_quota(actors, host, flavor, image):
    response = login(actors.member).post(
        reverse("instance_launch"),
        {"name": "web-{n}", "image": image.pk, "flavor": flavor.pk, "count": 3, "user_data": "#cloud-config\n"},
    )
    assert response.status_code == 302 and response["Location"] == reverse("instances")
    instances = list(Instance.objects.filter(tenant=actors.tenant).order_by("name"))
    assert [i.name for i in instances] == ["web-1", "web-2", "web-3"]
    assert all(i.host == host and i.image == image and i.task == "launch" for i in instances)
    assert instances[0].user_data == "#cloud-config\n"
    ops = Operation.objects.filter(kind="instance.launch", tenant=actors.tenant)
    assert sorted(ops.values_list("target_id", flat=True)) == sorted(str(i.pk) for i in instances)
    usage = tenant_usage(tenant_ids=[actors.tenant.pk])[actors.tenant.pk]
    assert (usage["instances"], usage["vcpus"], usage["ram_mib"], usage["disk_gib"]) == (3, 6, 6144, 30)


def test_launching_one_goes_to_its_page(actors, host, flavor, image):
    response = login(actors.member).post(
        reverse("instance_launch"), {"name": "solo", "image": image.pk, "flavor": flavor.pk, "count": 1}
    )
    instance = Instance.objects.get(name="solo")
    assert response["Location"] == reverse("instance_detail", args=[instance.pk])


def test_over_quota_launch_shows_the_refusal_and_creates_nothing(actors, host, big_flavor, image):
    Quota.objects.filter(tenant=actors.tenant).update(vcpus=6)
    response = login(actors.member).post(
        reverse("instance_launch"), {"name": "big", "image": image.pk, "flavor": big_flavor.pk, "count": 2}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "Quota exceeded for vCPUs" in text(html)
    impact = re.search(r'id="lc-quota-impact".*?</ul>', html, re.S).group(0)
    assert "0 + 8 = 8 / 6" in text(impact) and "lc-over" in impact
    assert not Instance.objects.exists() and not Operation.objects.exists()


def test_service_errors_land_on_their_field(actors, host, flavor, image):
    image.min_disk_gib = 50
    image.save()
    response = login(actors.member).post(
        reverse("instance_launch"), {"name": "vm", "image": image.pk, "flavor": flavor.pk, "count": 1}
    )
    form = response.context["form"]
    assert "flavor" in form.errors and "at least 50 GiB" in form.errors["flavor"][0]
    response = login(actors.member).post(
        reverse("instance_launch"), {"name": "bad/name", "image": image.pk, "flavor": flavor.pk, "count": 1}
    )
    assert "name" in response.context["form"].errors
    response = login(actors.member).post(
        reverse("instance_launch"), {"name": "vm", "image": image.pk, "flavor": flavor.pk, "count": 999}
    )
    assert "count" in response.context["form"].errors
    assert not Instance.objects.exists()


def test_another_tenants_image_cannot_be_launched(actors, host, flavor):
    theirs = make_image(actors.other_tenant, name="theirs")
    response = login(actors.member).post(
        reverse("instance_launch"), {"name": "vm", "image": theirs.pk, "flavor": flavor.pk, "count": 1}
    )
    assert "image" in response.context["form"].errors
    assert not Instance.objects.exists()


def test_iso_launch_is_installing(actors, host, flavor):
    iso = make_image(actors.tenant, name="installer", disk_format="iso", kind=Image.Kind.ISO, virtual_size=None)
    login(actors.member).post(
        reverse("instance_launch"), {"name": "inst", "image": iso.pk, "flavor": flavor.pk, "count": 1}
    )
    instance = Instance.objects.get(name="inst")
    assert instance.installing
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.RUNNING, task="")
    html = login(actors.member).get(reverse("instance_detail", args=[instance.pk])).content.decode()
    assert 'id="lc-action-finish_install"' in html
    login(actors.member).post(reverse("instance_action", args=[instance.pk]), {"action": "finish_install"})
    assert Operation.objects.filter(kind="instance.finish_install", target_id=str(instance.pk)).exists()


# ---------------------------------------------------------------- detail and its actions


def _button(html: str, action: str) -> str:
    return re.search(rf'<button[^>]*id="lc-action-{action}"[^>]*>', html).group(0)


def test_detail_buttons_follow_the_state(actors, running):
    html = login(actors.member).get(reverse("instance_detail", args=[running.pk])).content.decode()
    for action in ("shutdown", "stop", "reboot", "reset", "pause"):
        assert "disabled" not in _button(html, action), action
    for action in ("start", "resume"):
        assert "disabled" in _button(html, action), action
    assert 'id="lc-action-finish_install"' not in html  # not installing
    assert 'id="lc-console"' in html and 'id="lc-console-config"' in html  # the console card
    assert 'data-lc-action="capture" disabled' in html  # capture needs it shut off
    Instance.objects.filter(pk=running.pk).update(task="reboot")
    busy = login(actors.member).get(reverse("instance_detail", args=[running.pk])).content.decode()
    assert all("disabled" in _button(busy, a) for a in ("shutdown", "stop", "reboot"))


def test_detail_shows_summary_snapshots_disks_and_operations(actors, running):
    Instance.objects.filter(pk=running.pk).update(addresses=["192.168.150.10"], mac_address="52:54:00:aa:bb:cc")
    Snapshot.objects.create(tenant=actors.tenant, instance=running, name="before-upgrade", state="available")
    InstanceDisk.objects.create(tenant=actors.tenant, instance=running, size_gib=7, volume="v", target="vdb")
    member = text(login(actors.member).get(reverse("instance_detail", args=[running.pk])).content.decode())
    for fact in ("192.168.150.10", "52:54:00:aa:bb:cc", "m1.small", "debian-13", "before-upgrade", "7 GiB", "vdb"):
        assert fact in member, fact
    assert "Launching" in member  # the launch operation
    assert "node-1" not in member  # hosts are for staff
    staff = text(login(actors.cloud_admin).get(reverse("instance_detail", args=[running.pk])).content.decode())
    assert "node-1" in staff


def test_action_button_queues_the_operation(actors, running):
    response = login(actors.member).post(reverse("instance_action", args=[running.pk]), {"action": "shutdown"})
    assert response["Location"] == reverse("instance_detail", args=[running.pk])
    running.refresh_from_db()
    assert running.task == "shutdown" and running.desired_power_state == "stopped"
    assert Operation.objects.filter(kind="instance.shutdown", target_id=str(running.pk)).exists()


def test_refused_action_becomes_a_message(actors, running):
    response = login(actors.member).post(
        reverse("instance_action", args=[running.pk]), {"action": "start"}, follow=True
    )
    assert any("Cannot start" in note for note in messages_of(response))
    assert not Operation.objects.filter(kind="instance.start").exists()
    response = login(actors.member).post(
        reverse("instance_action", args=[running.pk]), {"action": "format_disk"}, follow=True
    )
    assert any("Unknown action" in note for note in messages_of(response))


def test_resize_resources_disk_snapshot_forms_call_the_services(actors, launch, big_flavor):
    vm = launch("vm", state=Instance.State.SHUTOFF)[0]
    client = login(actors.member)

    def settle():
        Instance.objects.filter(pk=vm.pk).update(task="")

    client.post(reverse("instance_resize", args=[vm.pk]), {"flavor": big_flavor.pk})
    vm.refresh_from_db()
    assert (vm.flavor, vm.vcpus, vm.task) == (big_flavor, 4, "resize")
    settle()
    client.post(reverse("instance_resources", args=[vm.pk]), {"vcpus": 2, "ram_mib": 3072})
    vm.refresh_from_db()
    assert (vm.vcpus, vm.ram_mib, vm.task) == (2, 3072, "set_resources")
    settle()
    client.post(reverse("instance_disk_attach", args=[vm.pk]), {"size_gib": 5})
    disk = InstanceDisk.objects.get(instance=vm)
    assert disk.size_gib == 5
    settle()
    client.post(reverse("instance_disk_detach", args=[vm.pk, disk.pk]))
    assert Operation.objects.filter(kind="instance.detach_disk").exists()
    settle()
    client.post(reverse("instance_snapshot_create", args=[vm.pk]), {"snapshot-name": "s1", "snapshot-description": "d"})
    snapshot = Snapshot.objects.get(instance=vm, name="s1")
    Snapshot.objects.filter(pk=snapshot.pk).update(state="available")
    settle()
    client.post(reverse("instance_snapshot_revert", args=[vm.pk, snapshot.pk]))
    assert Operation.objects.filter(kind="instance.snapshot_revert").exists()
    settle()
    client.post(reverse("instance_snapshot_delete", args=[vm.pk, snapshot.pk]))
    assert Operation.objects.filter(kind="instance.snapshot_delete").exists()


def test_invalid_form_input_becomes_a_message(actors, running):
    response = login(actors.member).post(
        reverse("instance_disk_attach", args=[running.pk]), {"size_gib": 0}, follow=True
    )
    assert any("Size (GiB)" in note for note in messages_of(response))
    assert not InstanceDisk.objects.exists()


def test_delete_from_the_detail_page(actors, running):
    response = login(actors.member).post(reverse("instance_delete", args=[running.pk]))
    assert response["Location"] == reverse("instances")
    running.refresh_from_db()
    assert running.state == Instance.State.DELETING and running.task == "delete"


def test_another_tenants_snapshot_and_disk_are_404(actors, running):
    theirs = Instance.objects.create(
        tenant=actors.other_tenant, name="theirs", flavor=running.flavor, vcpus=1, ram_mib=512, disk_gib=1
    )
    snapshot = Snapshot.objects.create(tenant=actors.other_tenant, instance=theirs, name="x", state="available")
    disk = InstanceDisk.objects.create(tenant=actors.other_tenant, instance=theirs, size_gib=1, volume="v")
    client = login(actors.member)
    for pk in (running.pk, theirs.pk):  # through one's own instance or theirs: not found either way
        assert client.post(reverse("instance_snapshot_delete", args=[pk, snapshot.pk])).status_code == 404
        assert client.post(reverse("instance_snapshot_revert", args=[pk, snapshot.pk])).status_code == 404
        assert client.post(reverse("instance_disk_detach", args=[pk, disk.pk])).status_code == 404
    assert not Operation.objects.exclude(kind="instance.launch").exists()


# ---------------------------------------------------------------- hosts


def test_hosts_page_shows_capacity_against_overcommit(actors, host, launch):
    launch("vm", count=2)
    idle = Host.objects.create(name="node-2", uri="test:///default", state="down", state_reason="no route to host")
    response = login(actors.cloud_admin).get(reverse("hosts"))
    html = response.content.decode()
    card = text(re.search(r'data-host="node-1".*?</form>', html, re.S).group(0))
    assert "4 / 32" in card  # 2 × 2 vCPUs of 8 CPUs × 4.0
    assert "4 / 15.5 GiB" in card  # 2 × 2 GiB of (16 GiB − 512 MiB) × 1.0
    assert "20 / 100 GiB" in card  # 2 × 10 GiB of a 100 GiB pool × 1.0
    assert "90.0 GB" in card  # pool free space
    assert "Instances 2" in card
    other = text(re.search(r'data-host="node-2".*?</form>', html, re.S).group(0))
    assert "no route to host" in other and "never" in other
    assert idle.name in other


def test_hosts_page_query_count_is_constant(actors):
    client = login(actors.cloud_admin)

    def make_rows(n: int) -> None:
        for _ in range(n):
            Host.objects.create(name=f"h{next(_serial)}", uri="test:///default", state="up", cpus=4, memory_mib=4096)

    assert_constant_queries(make_rows, lambda: client.get(reverse("hosts")), budget=10)


def test_host_refresh_reads_the_capacity(actors, host):
    # libvirt's test driver calls its pool "default-pool".
    Host.objects.filter(pk=host.pk).update(cpus=None, memory_mib=None, storage_pool="default-pool")
    response = login(actors.cloud_admin).post(reverse("host_refresh", args=[host.pk]), follow=True)
    host.refresh_from_db()
    assert host.cpus and host.memory_mib and host.state == "up"
    assert any("refreshed" in note for note in messages_of(response))


def test_unreachable_host_refresh_is_a_warning(actors, host):
    response = login(actors.cloud_admin).post(reverse("host_refresh", args=[host.pk]), follow=True)
    host.refresh_from_db()
    assert host.state == "down"
    assert any("did not answer" in note for note in messages_of(response))


def test_background_refresh_leaves_the_messages_for_the_next_page(actors, running):
    """live.js redraws the instance page with X-LC-Refresh: 1; that fetch must not use up a flash message."""
    client = login(actors.member)
    client.post(reverse("instance_snapshot_create", args=[running.pk]), {"snapshot-name": "before"})
    url = reverse("instance_detail", args=[running.pk])
    refresh = client.get(url, HTTP_X_LC_REFRESH="1").content.decode()
    assert "Taking snapshot" not in refresh
    assert "Taking snapshot “before”." in text(client.get(url).content.decode())


def test_detail_offers_only_the_resizes_and_reverts_the_services_take(actors, running, flavor, big_flavor):
    """Resize lists no flavor with a smaller disk; a snapshot taken at other sizes offers no Revert (#19)."""
    smaller = Flavor.objects.create(name="m1.tiny", vcpus=1, ram_mib=512, disk_gib=5)
    Instance.objects.filter(pk=running.pk).update(state=Instance.State.SHUTOFF)
    now = {"vcpus": running.vcpus, "ram_mib": running.ram_mib, "disk_gib": running.disk_gib}
    Snapshot.objects.create(tenant=actors.tenant, instance=running, name="fits", state="available", **now)
    Snapshot.objects.create(
        tenant=actors.tenant, instance=running, name="smaller", state="available", **{**now, "disk_gib": 5}
    )
    html = login(actors.member).get(reverse("instance_detail", args=[running.pk])).content.decode()
    resize = re.search(r'id="lc-instance-resize".*?</form>', html, re.S).group(0)
    assert f'value="{big_flavor.pk}"' in resize and f'value="{smaller.pk}"' not in resize

    def revert_button(name: str) -> str:
        row = re.search(rf'<tr data-snapshot="{name}">.*?</tr>', html, re.S).group(0)
        return re.search(r'<button[^>]*data-lc-action="snapshot_revert"[^>]*>', row).group(0)

    assert 'data-lc-needs-available="true"' in revert_button("fits") and "disabled" not in revert_button("fits")
    refused = revert_button("smaller")
    assert 'data-lc-needs-available="false"' in refused and " disabled" in refused
    assert "resized or its disks changed since this snapshot" in refused

    # what the page does not offer, the service refuses (the same check)
    snapshot = Snapshot.objects.get(name="smaller")
    response = login(actors.member).post(
        reverse("instance_snapshot_revert", args=[running.pk, snapshot.pk]), follow=True
    )
    assert any("was resized or its disks changed" in note for note in messages_of(response))
    Flavor.objects.filter(pk=smaller.pk).update(disk_gib=running.disk_gib)  # as large: offered again
    html = login(actors.member).get(reverse("instance_detail", args=[running.pk])).content.decode()
    assert f'value="{smaller.pk}"' in re.search(r'id="lc-instance-resize".*?</form>', html, re.S).group(0)


def test_launch_is_not_offered_over_a_quota(actors, host, flavor, big_flavor, image, launch):
    """The first render of the launch page disables Launch when the chosen flavor and count are over a quota."""
    Quota.objects.filter(tenant=actors.tenant).update(instances=1)
    launch("web")
    html = login(actors.member).get(reverse("instance_launch")).content.decode()
    button = re.search(r'<button[^>]*id="lc-launch-submit"[^>]*>', html).group(0)
    assert " disabled" in button and 'data-lc-can-launch="true"' in button
    Quota.objects.filter(tenant=actors.tenant).update(instances=5)
    html = login(actors.member).get(reverse("instance_launch")).content.decode()
    assert " disabled" not in re.search(r'<button[^>]*id="lc-launch-submit"[^>]*>', html).group(0)
