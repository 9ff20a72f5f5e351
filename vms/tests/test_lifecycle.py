"""Rules of the instance services that need no hypervisor: recovery of dead workers' operations,
heartbeats, adopted domains, capture keeping the instance busy, host capacity on growth, snapshot
reverts that would undo a resize."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from images.models import Image
from portal.selectors import tenant_usage
from portal.services import QuotaExceeded, set_quota
from vms import execution, lifecycle, operations
from vms.models import Flavor, Host, Instance, Operation, Snapshot
from vms.scheduler import NoValidHost

GIB = 1024**3
MIB = 1024**2
STALE = timedelta(seconds=120)


@pytest.fixture
def host(db):
    return Host.objects.create(
        name="node1",
        uri="test:///default",
        state=Host.State.UP,
        cpus=4,
        memory_mib=8192,
        reserved_ram_mib=0,
        cpu_allocation_ratio=1.0,
        pool_capacity=100 * GIB,
        pool_available=90 * GIB,
    )


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="lr.small", vcpus=2, ram_mib=1024, disk_gib=5)


@pytest.fixture
def instance(actors, host, flavor):
    return Instance.objects.create(
        tenant=actors.tenant,
        owner=actors.member,
        name="vm",
        flavor=flavor,
        vcpus=2,
        ram_mib=1024,
        disk_gib=5,
        host=host,
        state=Instance.State.SHUTOFF,
    )


def usage(tenant) -> dict[str, int]:
    return tenant_usage(tenant_ids=[tenant.pk])[tenant.pk]


def operation_for(instance: Instance, *, state: str, age: timedelta, heartbeat_age: timedelta | None = None):
    now = timezone.now()
    op = Operation.objects.create(
        kind="instance.start",
        tenant=instance.tenant,
        target_type="vms.instance",
        target_id=str(instance.pk),
        state=state,
    )
    Operation.objects.filter(pk=op.pk).update(
        created_at=now - age,
        started_at=now - age if state == Operation.State.RUNNING else None,
        heartbeat_at=None if heartbeat_age is None else now - heartbeat_age,
    )
    op.refresh_from_db()
    return op


# ---------------------------------------------------------------- recovery


def test_a_running_operation_without_heartbeat_is_requeued_and_counted(instance, django_capture_on_commit_callbacks):
    op = operation_for(instance, state=Operation.State.RUNNING, age=timedelta(hours=1), heartbeat_age=3 * STALE)
    with django_capture_on_commit_callbacks() as sent:
        assert execution.recover_stale_operations(stale_after=STALE) == [op.pk]
    op.refresh_from_db()
    assert op.state == Operation.State.QUEUED and op.params["attempts"] == 1 and len(sent) == 1
    # Re-sent just now: the next sweep leaves it alone for a full period.
    assert execution.recover_stale_operations(stale_after=STALE) == []


def test_a_live_operation_and_a_merely_waiting_one_are_left_alone(instance):
    live = operation_for(instance, state=Operation.State.RUNNING, age=timedelta(hours=1), heartbeat_age=STALE / 4)
    waiting = operation_for(instance, state=Operation.State.QUEUED, age=3 * STALE)
    assert execution.recover_stale_operations(stale_after=STALE) == []
    for op in (live, waiting):
        op.refresh_from_db()
        assert not op.finished and "attempts" not in op.params


def test_a_long_queued_operation_is_resent_without_counting_an_attempt(instance, django_capture_on_commit_callbacks):
    op = operation_for(instance, state=Operation.State.QUEUED, age=11 * STALE)
    with django_capture_on_commit_callbacks() as sent:
        assert execution.recover_stale_operations(stale_after=STALE) == [op.pk]
    op.refresh_from_db()
    assert op.state == Operation.State.QUEUED and "attempts" not in op.params and len(sent) == 1


def test_an_operation_whose_worker_died_too_often_fails_cleanly(instance):
    Instance.objects.filter(pk=instance.pk).update(task="start")
    op = operation_for(instance, state=Operation.State.RUNNING, age=timedelta(hours=1), heartbeat_age=2 * STALE)
    Operation.objects.filter(pk=op.pk).update(params={"attempts": 3})
    assert execution.recover_stale_operations(stale_after=STALE, max_attempts=3) == []
    op.refresh_from_db()
    instance.refresh_from_db()
    assert op.state == Operation.State.FAILED and "stopped 3 times" in op.error_text and op.error_args == {"n": 3}
    assert instance.task == ""


@pytest.mark.django_db(transaction=True)
def test_heartbeats_come_from_a_thread_during_one_long_step(actors, settings):
    settings.LABCLOUD_OPERATION_STALE_SECONDS = 1
    op = Operation.objects.create(
        kind="instance.start", tenant=actors.tenant, target_type="vms.instance", target_id="1"
    )
    assert operations.begin(operation_id=op.pk) is not None
    first = Operation.objects.get(pk=op.pk).heartbeat_at
    with operations.heartbeats(operation=op):
        time.sleep(0.8)  # one blocking call, no progress reported
    assert Operation.objects.get(pk=op.pk).heartbeat_at > first
    # A redelivered task of an operation with a fresh heartbeat does not run it a second time.
    assert operations.begin(operation_id=op.pk) is None


# ---------------------------------------------------------------- adopted domains, capture, growth, revert


@pytest.mark.parametrize("call", ["resize", "set_resources", "attach_disk", "finish_install"])
def test_adopted_domains_are_not_rebuilt_from_portal_volumes(actors, instance, flavor, call):
    Instance.objects.filter(pk=instance.pk).update(adopted=True, installing=True)
    instance.refresh_from_db()
    bigger = Flavor.objects.create(name="lr.big", vcpus=2, ram_mib=2048, disk_gib=10)
    calls = {
        "resize": lambda: lifecycle.resize_instance(actor=actors.member, instance=instance, flavor=bigger),
        "set_resources": lambda: lifecycle.set_resources(actor=actors.member, instance=instance, vcpus=1),
        "attach_disk": lambda: lifecycle.attach_disk(actor=actors.member, instance=instance, size_gib=1),
        "finish_install": lambda: lifecycle.request_action(
            actor=actors.member, instance=instance, action="finish_install"
        ),
    }
    with pytest.raises(lifecycle.ConflictError, match="adopted"):
        calls[call]()
    assert not Operation.objects.exists()


def test_capture_keeps_the_instance_busy_until_the_disk_was_read(actors, instance):
    Instance.objects.filter(pk=instance.pk).update(task="capture")
    with pytest.raises(lifecycle.ConflictError, match="busy"):
        lifecycle.request_action(actor=actors.member, instance=instance, action="start")
    lifecycle.capture_finished({"instance_id": instance.pk})
    instance.refresh_from_db()
    assert instance.task == ""
    assert not Image.objects.exists()


def test_ram_changes_only_while_shut_off(actors, instance):
    """A balloon cannot be enforced: RAM is the domain's <memory>, set while shut off."""
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.RUNNING)
    instance.refresh_from_db()
    with pytest.raises(lifecycle.ConflictError, match="shut off"):
        lifecycle.set_resources(actor=actors.member, instance=instance, ram_mib=512)
    instance.refresh_from_db()
    assert (instance.ram_mib, instance.task) == (1024, "")
    assert not Operation.objects.filter(kind="instance.set_resources").exists()


def test_snapshot_storage_is_reserved_until_measured(actors, instance):
    """A running instance's snapshot may save all its memory; a shut-off one reserves 1 MiB; then the measured size."""
    set_quota(actor=actors.cloud_admin, tenant=actors.tenant, limits={"snapshot_mib": 1000})
    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.RUNNING)
    instance.refresh_from_db()
    with pytest.raises(QuotaExceeded) as refused:
        lifecycle.create_snapshot(actor=actors.member, instance=instance, name="with-memory")
    assert (refused.value.resource, refused.value.requested, refused.value.in_use) == ("snapshot_mib", 1024, 0)
    assert not Snapshot.objects.exists()

    Instance.objects.filter(pk=instance.pk).update(state=Instance.State.SHUTOFF)
    instance.refresh_from_db()
    lifecycle.create_snapshot(actor=actors.member, instance=instance, name="off")
    assert usage(actors.tenant)["snapshot_mib"] == 1  # held while it is being taken
    # The worker measured it (and the watcher later, as the guest rewrites blocks): the measure replaces the hold.
    Instance.objects.filter(pk=instance.pk).update(snapshot_bytes=999 * MIB + 1, task="")
    Snapshot.objects.filter(instance=instance).update(state=Snapshot.State.AVAILABLE)
    assert usage(actors.tenant)["snapshot_mib"] == 1000
    with pytest.raises(QuotaExceeded, match="snapshot storage"):
        lifecycle.create_snapshot(actor=actors.member, instance=instance, name="one-more")


def test_growth_must_fit_the_host(actors, instance, host):
    huge = Flavor.objects.create(name="lr.huge", vcpus=8, ram_mib=1024, disk_gib=5)
    with pytest.raises(NoValidHost, match="not enough vCPUs"):
        lifecycle.resize_instance(actor=actors.member, instance=instance, flavor=huge)
    Host.objects.filter(pk=host.pk).update(pool_capacity=6 * GIB)
    with pytest.raises(NoValidHost, match="disk space"):
        lifecycle.attach_disk(actor=actors.member, instance=instance, size_gib=2)
    instance.refresh_from_db()
    assert instance.flavor.name == "lr.small" and not instance.disks.exists() and not Operation.objects.exists()


def test_a_revert_that_would_undo_a_resize_is_refused(actors, instance):
    snapshot = Snapshot.objects.create(
        tenant=actors.tenant, instance=instance, name="s", state="available", vcpus=2, ram_mib=512, disk_gib=5
    )
    with pytest.raises(lifecycle.ConflictError, match="resized"):
        lifecycle.revert_snapshot(actor=actors.member, snapshot=snapshot)
    Snapshot.objects.filter(pk=snapshot.pk).update(ram_mib=1024)
    snapshot.refresh_from_db()
    assert lifecycle.revert_snapshot(actor=actors.member, snapshot=snapshot).kind == "instance.snapshot_revert"
