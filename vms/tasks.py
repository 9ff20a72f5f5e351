"""Celery tasks of the compute app: thin wrappers around its services (imported when a task runs).

Instance operations have time limits of their own (``LABCLOUD_INSTANCE_TASK_TIME_LIMIT``: a launch may
copy its image first); the other tasks have Celery's defaults from the settings (``CELERY_TASK_SOFT_TIME_LIMIT``).
"""

from __future__ import annotations

import logging

from celery import bootsteps, shared_task
from celery.signals import worker_ready
from django.conf import settings

from portal.celery import app

log = logging.getLogger(__name__)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT,
    time_limit=settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT + settings.LABCLOUD_TASK_TIME_LIMIT_GRACE,
)
def run_instance_operation(operation_id: int) -> None:
    from vms.execution import execute

    execute(operation_id=operation_id)


@shared_task(
    soft_time_limit=settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT * 4,
    time_limit=settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT * 4 + settings.LABCLOUD_TASK_TIME_LIMIT_GRACE,
)
def drain_host_task(operation_id: int) -> None:
    """A host's instances migrated off it one at a time (vms.moves.run_drain)."""
    from vms.moves import run_drain

    run_drain(operation_id=operation_id)


@shared_task(
    soft_time_limit=settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT * 4,
    time_limit=settings.LABCLOUD_INSTANCE_TASK_TIME_LIMIT * 4 + settings.LABCLOUD_TASK_TIME_LIMIT_GRACE,
)
def evacuate_host_task(operation_id: int) -> None:
    """A dead host's instances rebuilt on other hosts one at a time (vms.moves.run_evacuate)."""
    from vms.moves import run_evacuate

    run_evacuate(operation_id=operation_id)


@shared_task
def recover_stale_operations_task() -> list[int]:
    from vms.execution import recover_stale_operations

    return recover_stale_operations()


@worker_ready.connect
def _recover_at_start(**_kwargs) -> None:
    """A restarted worker picks up what its predecessor left half-done (after the stale delay)."""
    from vms.execution import recover_stale_operations

    recover_stale_operations()


class SendUnsentOnConnect(bootsteps.StartStopStep):
    """Each time the worker (re)connects to the broker, send the operations the broker did not take meanwhile.

    A consumer bootstep starts again after every reconnection (``worker_ready`` fires only once), so an
    action asked while Redis was down goes as soon as the worker sees Redis again, not at the next sweep.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c) -> None:
        from vms.operations import send_unsent

        try:
            send_unsent()
        except Exception:  # the database may be away too: the sweep (beat) tries again
            log.exception("could not send the unsent operations")


app.steps["consumer"].add(SendUnsentOnConnect)


@shared_task
def sync_firewall_task(tenant_id: int, gone: list[str] | None = None) -> int:
    """A tenant's security groups onto its hosts' filters (vms.security_groups.sync_firewall)."""
    from portal.models import Tenant
    from vms.security_groups import sync_firewall

    tenant = Tenant.objects.filter(pk=tenant_id).first()
    return 0 if tenant is None else sync_firewall(tenant=tenant, gone=gone or ())


@shared_task
def push_quota_task(tenant_id: int) -> dict[str, bool]:
    from portal.models import Tenant
    from vms.compute.openstack.mirror import push_quota

    tenant = Tenant.objects.filter(pk=tenant_id).first()
    return {} if tenant is None else push_quota(tenant=tenant)


@shared_task
def push_quota_to_task(host_id: int, tenant_id: int) -> bool:
    from portal.models import Tenant
    from vms.compute.openstack.mirror import push_quota_to
    from vms.models import Host

    host = Host.objects.filter(pk=host_id).first()
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    return host is not None and tenant is not None and push_quota_to(host=host, tenant=tenant)


@shared_task
def sync_flavor_task(flavor_id: int) -> dict[str, str]:
    from vms.compute.openstack.mirror import sync_flavor

    return sync_flavor(flavor_id=flavor_id)


@shared_task
def delete_flavor_copies_task(copies: list[list]) -> None:
    from vms.compute.openstack.mirror import delete_flavor_copies

    delete_flavor_copies(copies=[(int(host_id), str(cloud_id)) for host_id, cloud_id in copies])


@shared_task
def delete_cloud_projects_task(projects: list[list]) -> None:
    from vms.compute.openstack.mirror import delete_projects

    delete_projects(projects=[(int(host_id), str(project_id)) for host_id, project_id in projects])


@shared_task
def sync_image_copies_task(image_id: int) -> dict[str, str]:
    from vms.compute.openstack.images import sync_image_copies

    return sync_image_copies(image_id=image_id)
