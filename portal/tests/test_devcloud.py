"""Smoke test of the devcloud (scripts/devcloud/): the real OpenStack APIs the OpenStack backend will drive.

Plain openstacksdk, no portal code: tenant→project, private flavor, Glance upload, server lifecycle with the
fake compute driver, Nova compute quotas and Nova's own quota refusal, and the real neutron-server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc

from portal.backends.openstack_testing import ROOT, DevCloud, devcloud_fixture  # noqa: F401

pytestmark = pytest.mark.openstack

TINY_QCOW2 = ROOT / "var" / "test-media" / "tiny.qcow2"  # built by scripts/build_test_media.sh


@pytest.fixture(scope="module")
def admin(devcloud: DevCloud):
    conn = devcloud.connect()
    yield conn
    conn.close()


@pytest.fixture
def tenant(devcloud: DevCloud, admin):
    """A Keystone project with a member user, as the portal will create per tenant; removed afterwards."""
    name = f"lc-smoke-{uuid.uuid4().hex[:8]}"
    domain = admin.identity.find_domain("Default")
    project = admin.identity.create_project(name=name, domain_id=domain.id, description="labcloud smoke test")
    password = uuid.uuid4().hex
    user = admin.identity.create_user(name=name, password=password, domain_id=domain.id, default_project_id=project.id)
    admin.identity.assign_project_role_to_user(project, user, admin.identity.find_role("member"))
    conn = devcloud.connect(username=name, password=password, project_name=name)
    yield project, conn
    for server in conn.compute.servers():
        admin.compute.delete_server(server)
        _wait_gone(admin, server.id)
    conn.close()
    admin.identity.delete_user(user)
    admin.identity.delete_project(project)


def _wait_gone(conn, server_id: str, timeout: float = 60) -> None:
    # openstacksdk's wait_for_delete can return early: poll instead
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.compute.find_server(server_id, ignore_missing=True) is None:
            return
        time.sleep(0.5)
    raise AssertionError(f"server {server_id} still there after {timeout}s")


def _tiny_qcow2(tmp_path: Path) -> Path:
    if TINY_QCOW2.exists():
        return TINY_QCOW2
    out = tmp_path / "tiny.qcow2"  # fresh checkout without test media: a real (empty) qcow2 does as well
    subprocess.run([shutil.which("qemu-img") or "qemu-img", "create", "-q", "-f", "qcow2", str(out), "64M"], check=True)
    return out


def test_server_lifecycle_in_a_tenant_project(admin, tenant, tmp_path):
    project, conn = tenant
    flavor = admin.compute.create_flavor(
        name=f"{project.name}-small", ram=256, vcpus=1, disk=1, is_public=False, description="labcloud smoke"
    )
    image = None
    try:
        admin.compute.flavor_add_tenant_access(flavor, project.id)
        assert project.id in {a["tenant_id"] for a in admin.compute.get_flavor_access(flavor)}
        assert conn.compute.find_flavor(flavor.name) is not None  # visible to the project...
        assert admin.compute.find_flavor(flavor.name) is not None

        image = conn.image.create_image(
            name=f"{project.name}-tiny",
            disk_format="qcow2",
            container_format="bare",
            visibility="private",
            filename=str(_tiny_qcow2(tmp_path)),
            wait=True,
        )
        image = conn.image.get_image(image)
        assert image.status == "active"
        assert image.owner == project.id
        assert image.visibility == "private"

        t0 = time.monotonic()
        server = conn.compute.create_server(name="smoke", flavor_id=flavor.id, image_id=image.id, networks="none")
        server = conn.compute.wait_for_server(server, status="ACTIVE", interval=0.2, wait=120)
        create_to_active = time.monotonic() - t0
        print(f"\ndevcloud create->ACTIVE {create_to_active:.2f}s")
        assert server.status == "ACTIVE"

        conn.compute.stop_server(server)
        conn.compute.wait_for_server(server, status="SHUTOFF", interval=0.2, wait=60)
        conn.compute.start_server(server)
        conn.compute.wait_for_server(server, status="ACTIVE", interval=0.2, wait=60)

        conn.compute.delete_server(server)
        _wait_gone(conn, server.id)
    finally:
        admin.compute.delete_flavor(flavor)
        if image is not None:
            admin.image.delete_image(image, ignore_missing=True)


def test_compute_quotas_pushed_read_back_and_enforced_by_nova(admin, tenant, tmp_path):
    project, conn = tenant
    admin.compute.update_quota_set(project.id, instances=1, cores=2, ram=512)
    quotas = admin.compute.get_quota_set(project.id)
    assert (quotas.instances, quotas.cores, quotas.ram) == (1, 2, 512)

    flavor = admin.compute.create_flavor(name=f"{project.name}-q", ram=256, vcpus=1, disk=1, is_public=False)
    admin.compute.flavor_add_tenant_access(flavor, project.id)
    image = conn.image.create_image(
        name=f"{project.name}-q",
        disk_format="qcow2",
        container_format="bare",
        filename=str(_tiny_qcow2(tmp_path)),
        wait=True,
    )
    try:
        first = conn.compute.create_server(name="q1", flavor_id=flavor.id, image_id=image.id, networks="none")
        conn.compute.wait_for_server(first, status="ACTIVE", interval=0.2, wait=120)
        with pytest.raises(os_exc.ForbiddenException, match=r"(?i)quota exceeded"):
            conn.compute.create_server(name="q2", flavor_id=flavor.id, image_id=image.id, networks="none")
        usage = admin.compute.get_quota_set(project.id, usage=True).usage
        assert usage["instances"] == 1
    finally:
        admin.compute.delete_flavor(flavor)
        admin.image.delete_image(image, ignore_missing=True)


def test_neutron_is_a_real_ml2_server(admin, tenant, tmp_path):
    """neutron-server with ML2 and no agents: real networks, subnets, ports; a server boots on a network."""
    project, conn = tenant
    assert admin.network.find_extension("security-group") is not None
    net = conn.network.create_network(name=f"{project.name}-net")
    flavor = admin.compute.create_flavor(name=f"{project.name}-n", ram=256, vcpus=1, disk=1, is_public=False)
    admin.compute.flavor_add_tenant_access(flavor, project.id)
    image = conn.image.create_image(
        name=f"{project.name}-n",
        disk_format="qcow2",
        container_format="bare",
        filename=str(_tiny_qcow2(tmp_path)),
        wait=True,
    )
    try:
        assert net.project_id == project.id
        subnet = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.99.0.0/24")
        port = conn.network.create_port(network_id=net.id)
        assert port.fixed_ips[0]["subnet_id"] == subnet.id
        conn.network.delete_port(port)

        server = conn.compute.create_server(
            name="on-net", flavor_id=flavor.id, image_id=image.id, networks=[{"uuid": net.id}]
        )
        server = conn.compute.wait_for_server(server, status="ACTIVE", interval=0.2, wait=120)
        (vm_port,) = conn.network.ports(device_id=server.id)
        binding = admin.network.get_port(vm_port.id)  # binding:* attributes are admin-only
        assert (binding.binding_host_id, binding.binding_vif_type) == ("devcloud-compute", "tap")  # devcloud_ml2
        assert vm_port.fixed_ips[0]["ip_address"] in {a["addr"] for a in server.addresses[net.name]}
        conn.compute.delete_server(server)
        _wait_gone(conn, server.id)
        assert list(conn.network.ports(device_id=server.id)) == []  # Nova removed the port it created
    finally:
        for leftover in conn.compute.servers():
            conn.compute.delete_server(leftover)
            _wait_gone(conn, leftover.id)
        admin.compute.delete_flavor(flavor)
        admin.image.delete_image(image, ignore_missing=True)
        conn.network.delete_network(net)


def test_cloud_down_is_a_connection_error(devcloud: DevCloud):
    """What the driver will see when a cloud is unreachable (nothing listens on this port)."""
    conn = devcloud.connect(auth_url="http://127.0.0.1:9/v3")
    with pytest.raises(ksa_exc.ConnectFailure):
        conn.compute.get("/servers")
