"""GET /metrics: Prometheus text format for cloud admins, their API tokens and the scraper token only."""

from __future__ import annotations

import secrets

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from portal.services import create_api_token
from portal.testing import assert_access_matrix, assert_constant_queries
from vms.models import Flavor, Host, Instance, InstanceDisk, Operation

URL = "/metrics"


@pytest.fixture
def flavor(db):
    return Flavor.objects.create(name="lctest.prom", vcpus=2, ram_mib=256, disk_gib=3)


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_access_matrix_for_sessions(actors):
    assert_access_matrix(
        actors,
        method="GET",
        url=URL,
        api=False,
        expected={"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 200},
    )
    refused = Client().get(URL)
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert Client().post(URL).status_code == 405


def test_tokens(actors, settings):
    settings.METRICS_TOKEN = "scrape-" + secrets.token_hex(16)
    _, admin_token = create_api_token(user=actors.cloud_admin, name="prom")
    _, member_token = create_api_token(user=actors.tenant_admin, name="prom")

    def get(token: str):
        return Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {token}")

    assert get(settings.METRICS_TOKEN).status_code == 200
    assert get(admin_token).status_code == 200
    assert get(member_token).status_code == 403
    assert get("scrape-wrong").status_code == 401
    assert get(settings.METRICS_TOKEN + "x").status_code == 401
    # A bearer token decides even for a signed-in cloud admin: a wrong one is refused.
    session = actors.client("cloud_admin", api=False)
    assert session.get(URL, HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    settings.METRICS_TOKEN = ""
    assert get("").status_code == 401  # an empty setting never matches an empty token


def test_exported_figures(actors, flavor):
    host = Host.objects.create(
        name="kvm1",
        uri="test:///default",
        state=Host.State.UP,
        cpus=8,
        memory_mib=16384,
        free_memory_mib=8192,
        pool_capacity=100 * 1024**3,
        pool_available=60 * 1024**3,
        cpu_allocation_ratio=4.0,
    )
    vm = Instance.objects.create(
        tenant=actors.tenant,
        name="a",
        flavor=flavor,
        vcpus=2,
        ram_mib=256,
        disk_gib=3,
        host=host,
        state=Instance.State.RUNNING,
    )
    InstanceDisk.objects.create(tenant=actors.tenant, instance=vm, size_gib=5, volume="x")
    Operation.objects.create(
        kind="instance.launch", tenant=actors.tenant, target_type="vms.instance", target_id=str(vm.pk), state="failed"
    )
    response = actors.client("cloud_admin", api=False).get(URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    found = samples(response.content.decode())
    h = (("host", "kvm1"),)
    assert found[("labcloud_host_up", h)] == 1
    assert found[("labcloud_host_cpus", h)] == 8
    assert found[("labcloud_host_memory_bytes", h)] == 16384 * 1024**2
    assert found[("labcloud_host_pool_available_bytes", h)] == 60 * 1024**3
    assert found[("labcloud_host_allocated_vcpus", h)] == 2
    assert found[("labcloud_host_limit_vcpus", h)] == 32
    assert found[("labcloud_host_allocated_disk_gib", h)] == 8
    assert found[("labcloud_instances", (("state", "running"), ("tenant", "tenant-a")))] == 1
    assert found[("labcloud_operations", (("kind", "instance.launch"), ("state", "failed")))] == 1
    assert found[("labcloud_quota_used", (("resource", "vcpus"), ("tenant", "tenant-a")))] == 2
    assert found[("labcloud_quota_used", (("resource", "disk_gib"), ("tenant", "tenant-a")))] == 8
    assert ("labcloud_quota_limit", (("resource", "instances"), ("tenant", "tenant-b"))) in found


def test_query_count_is_constant(actors, flavor):
    client = actors.client("cloud_admin", api=False)
    made = {"n": 0}

    def make_rows(n: int) -> None:
        for _ in range(n):
            made["n"] += 1
            i = made["n"]
            host = Host.objects.create(name=f"h{i}", uri="test:///default", state=Host.State.UP, cpus=4)
            vm = Instance.objects.create(
                tenant=actors.tenant if i % 2 else actors.other_tenant,
                name=f"vm{i}",
                flavor=flavor,
                vcpus=1,
                ram_mib=128,
                disk_gib=1,
                host=host,
                state=Instance.State.RUNNING if i % 3 else Instance.State.SHUTOFF,
            )
            Operation.objects.create(
                kind="instance.launch", tenant=vm.tenant, target_type="vms.instance", target_id=str(vm.pk)
            )

    def request():
        assert client.get(URL).status_code == 200

    assert_constant_queries(make_rows, request, budget=15)
