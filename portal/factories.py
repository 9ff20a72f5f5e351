"""Rows for tests, made one way: hosts, flavors, instances and image shares as the services would leave them.

Imported by every app's tests (``from portal.factories import make_instance``): one place that knows
which fields a row needs, instead of a copy per test module.
"""

from __future__ import annotations

import secrets
import uuid as uuidlib

from images.models import Image, ImageShare
from portal.models import Tenant
from vms.models import Flavor, Host, Instance

GIB = 1024**3


def make_host(name: str | None = None, **fields) -> Host:
    """A libvirt host that is up with known capacity (``test:///default`` unless ``uri`` says otherwise)."""
    values = {
        "uri": "test:///default",
        "storage_pool": "default-pool",
        "state": Host.State.UP,
        "cpus": 8,
        "memory_mib": 16384,
        "pool_capacity": 100 * GIB,
        "pool_available": 90 * GIB,
        **fields,
    }
    return Host.objects.create(name=name or f"node{Host.objects.count() + 1}", **values)


def make_flavor(name: str = "lctest.vm", *, vcpus: int = 1, ram_mib: int = 128, disk_gib: int = 1, **fields) -> Flavor:
    """The flavor of that name (made with these sizes the first time)."""
    flavor, _ = Flavor.objects.get_or_create(
        name=name, defaults={"vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": disk_gib, **fields}
    )
    return flavor


def make_instance(
    tenant,
    flavor: Flavor | None = None,
    host: Host | None = None,
    *,
    name: str | None = None,
    state: str = Instance.State.RUNNING,
    uuid_: str | uuidlib.UUID | None = None,
    **fields,
) -> Instance:
    """An instance row of ``tenant`` (its sizes are the flavor's unless given), as a finished launch leaves it."""
    flavor = flavor or make_flavor()
    values = {"vcpus": flavor.vcpus, "ram_mib": flavor.ram_mib, "disk_gib": flavor.disk_gib, **fields}
    if uuid_ is not None:
        values["uuid"] = uuidlib.UUID(str(uuid_))
    return Instance.objects.create(
        tenant=tenant,
        name=name or f"vm-{secrets.token_hex(3)}",
        flavor=flavor,
        host=host,
        state=state,
        **values,
    )


def share_image_with(image: Image, *tenants: Tenant, status: str = ImageShare.Status.ACCEPTED) -> list[ImageShare]:
    """Shares of ``image`` with ``tenants`` as their admins' answer leaves them (accepted unless ``status`` says
    otherwise), each named by the tenant's slug; the image becomes shared if it was private."""
    if image.visibility == Image.Visibility.PRIVATE:
        Image.objects.filter(pk=image.pk).update(visibility=Image.Visibility.SHARED)
        image.visibility = Image.Visibility.SHARED
    return [
        ImageShare.objects.create(image=image, tenant=tenant, reference=tenant.slug, status=status)
        for tenant in tenants
    ]
