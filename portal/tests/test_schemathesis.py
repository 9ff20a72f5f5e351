"""Property-based test of the whole /api/v1/ schema against the in-process app (Schemathesis).

Every operation of the published schema (so endpoints added later are covered by
themselves) is called with generated requests, authenticated by a read-write API token,
once as a member of a tenant and once as a cloud admin (who can reach every write).
The requests are both schema-valid (positive) and schema-violating (negative), from
Schemathesis's examples, coverage and fuzzing phases, and every answer goes through
Schemathesis's checks as ``--checks all`` names them (``CHECKS`` below): no server error,
the documented status, media type, headers and body; negative data refused, missing
required headers and unsupported methods refused, deleted resources gone, created ones
reachable, authentication not ignored.

Each example runs in a rolled-back savepoint, so examples do not leak state into each
other (a generated DELETE cannot revoke the token in use). An active image made through
the real pipeline is the target of every image operation, and ids in the path are aimed
at seeded objects when the generated id is a valid one (a negative id stays as it is).
The token is the test's: Schemathesis does not generate (or mutate) the Authorization
header, which the caller would replace anyway.

Check left out, and why:

- ``max_response_time``: enabled by ``--checks all`` only with a limit; a time limit on a
  shared machine would make the test flaky, and speed is measured by ``bench/``.
- ``positive_data_acceptance`` (not yet passing, issue #19): it wants every schema-valid request to succeed
  (or answer 401/403/404/409/429), but the API answers 400 to schema-valid requests for what an OpenAPI
  schema cannot say: ids in a body or a filter of objects that do not exist or are not the requester's
  ("Invalid pk", "Select a valid choice"), cross-field rules (a libvirt host needs a URI, an ISO has the
  disk format iso, a minimum disk not below the image's virtual size), an import URL whose host does not
  resolve, vCPUs and RAM within the instance's flavor, a Content-Range that must match the body, an image
  made public by a non-admin. Each needs either a data source of real ids for the generator or a
  status other than 400 from the API; until then the check is run by hand (docs/api.md).

The run is reproducible: a fixed Schemathesis seed and Hypothesis's ``derandomize``.
"""

from __future__ import annotations

import io
import subprocess

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import load_all_checks

from images.models import Image
from images.services import create_image, process_image, receive_chunk
from portal.models import Membership
from portal.services import create_api_token
from portal.wsgi import application
from vms.models import Flavor, Host, Instance, InstanceDisk, Operation, Snapshot, UnmanagedDomain

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
schema.config.seed = 19
schema.config.generation.update(modes=["positive", "negative"], with_security_parameters=False)
schema.config.checks.update(included_check_names=["all"])

load_all_checks()
LEFT_OUT = {"max_response_time", "positive_data_acceptance"}
CHECKS = [REGISTERED_CHECKS.get_one(name) for name in REGISTERED_CHECKS.get_all_names() if name not in LEFT_OUT]


@pytest.fixture
def existing_image(actors, tmp_path, settings, media_file):
    """An active image of tenant A, made through the real pipeline, so image operations reach real code."""
    settings.LABCLOUD_IMAGE_STORE = tmp_path / "store"  # generated uploads must not land in var/images
    image = create_image(
        actor=actors.member, tenant=actors.tenant, name="seeded", disk_format="qcow2", size=media_file.stat().st_size
    )
    data = media_file.read_bytes()
    receive_chunk(actor=actors.member, image=image, stream=io.BytesIO(data), offset=0, length=len(data))
    operation = Operation.objects.get(kind="image.process", target_id=str(image.pk))
    process_image(operation_id=operation.pk)  # on-commit hooks do not run inside the test transaction
    image.refresh_from_db()
    assert image.status == Image.Status.ACTIVE
    Host.objects.create(name="schemathesis-host", uri="test:///default", storage_pool="default")
    return image


@pytest.fixture
def existing_instance(actors, existing_image):
    """A running instance of tenant A on the seeded host, with a disk and a snapshot, and an unmanaged domain,
    so the instance, host and adoption operations reach the lifecycle services."""
    host = Host.objects.get(name="schemathesis-host")
    flavor = Flavor.objects.create(name="seed.small", vcpus=1, ram_mib=512, disk_gib=5)
    instance = Instance.objects.create(
        tenant=actors.tenant,
        owner=actors.member,
        name="seeded-vm",
        flavor=flavor,
        image=existing_image,
        vcpus=1,
        ram_mib=256,
        disk_gib=5,
        host=host,
        state=Instance.State.RUNNING,
    )
    disk = InstanceDisk.objects.create(tenant=actors.tenant, instance=instance, size_gib=1, volume="seed-disk1")
    snapshot = Snapshot.objects.create(
        tenant=actors.tenant,
        instance=instance,
        name="seed-snap",
        state=Snapshot.State.AVAILABLE,
        vcpus=instance.vcpus,
        ram_mib=instance.ram_mib,
        disk_gib=instance.disk_gib,
        disk_ids=[disk.pk],
    )
    unmanaged = UnmanagedDomain.objects.create(
        host=host, uuid="6f3a1d0e-0000-4000-8000-000000000001", name="stray", state="shutoff"
    )
    return {"instance": instance, "disk": disk, "snapshot": snapshot, "host": host, "unmanaged": unmanaged}


@pytest.fixture
def media_file(tmp_path):
    path = tmp_path / "seed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


@pytest.fixture(params=["member", "cloud_admin"])
def auth_headers(request, actors, existing_image):
    user = getattr(actors, request.param)
    if request.param == "member":
        # something to find: a second tenant membership and a private flavor shared with tenant A
        Membership.objects.create(tenant=actors.other_tenant, user=actors.member, role=Membership.Role.MEMBER)
    flavor = Flavor.objects.create(name="m1.small", vcpus=1, ram_mib=1024, disk_gib=10, is_public=False)
    flavor.tenants.set([actors.tenant])
    _token, raw = create_api_token(user=user, name="schemathesis", scope="write")
    cache.clear()  # fresh throttle counters
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """The real WSGI handler closes database connections at the end of each request, which would
    close the test's own transaction on PostgreSQL; Django's test client unhooks it the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# Operations aimed at the seeded objects rather than at random ids.
SEEDED = {
    "/api/v1/instances/{id}": "instance",
    "/api/v1/hosts/{id}": "host",
    "/api/v1/unmanaged-domains/{id}": "unmanaged",
}


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case, auth_headers, existing_image, existing_instance):
    # Random ids almost never exist: aim the operations at the seeded objects, but only ids that are valid
    # as generated, so a negative case (a path id of 0, -1 or 1.5) stays negative.
    targets = {}
    if case.path.startswith("/api/v1/images/{id}"):
        targets["id"] = existing_image.pk
    for prefix, key in SEEDED.items():
        if case.path.startswith(prefix):
            targets["id"] = existing_instance[key].pk
    targets |= {"disk_id": existing_instance["disk"].pk, "snapshot_id": existing_instance["snapshot"].pk}
    for parameter, value in (case.path_parameters or {}).items():
        if parameter in targets and _is_id(value):
            case.path_parameters[parameter] = targets[parameter]
    with transaction.atomic():
        case.call_and_validate(headers=auth_headers, checks=CHECKS)
        transaction.set_rollback(True)
