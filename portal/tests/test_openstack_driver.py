"""The OpenStack driver (portal/backends/openstack/) against the real devcloud (scripts/devcloud/).

Every project, flavor, image, keypair and server made here is named ``lc-ostest-<random>…`` and removed
afterwards, also when a test fails.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from portal.backends.base import BackendError, HostUnreachable, NotFound
from portal.backends.openstack import (
    AuthFailed,
    ConsoleUnavailable,
    ImageRejected,
    OpenStackAuth,
    OpenStackDriver,
    QuotaExceeded,
    ServerState,
    keypair_name_for,
    server_state_of,
)
from portal.backends.openstack_testing import ROOT, DevCloud, devcloud_fixture  # noqa: F401

pytestmark = pytest.mark.openstack

TINY_QCOW2 = ROOT / "var" / "test-media" / "tiny.qcow2"  # built by scripts/build_test_media.sh
PREFIX = f"lc-ostest-{uuid.uuid4().hex[:8]}"


def auth_of(devcloud: DevCloud, **overrides) -> OpenStackAuth:
    a = devcloud.auth
    values = {
        "auth_url": a["auth_url"],
        "username": a["username"],
        "password": a["password"],
        "project_name": a["project_name"],
        "user_domain_name": a.get("user_domain_name", "Default"),
        "project_domain_name": a.get("project_domain_name", "Default"),
        "region_name": devcloud.region_name,
    }
    return OpenStackAuth(**{**values, **overrides})


@pytest.fixture(scope="module")
def driver(devcloud: DevCloud):
    drv = OpenStackDriver(auth_of(devcloud))
    yield drv
    drv.close()


def _cleanup_project(driver: OpenStackDriver, project_id: str) -> None:
    for server in driver.list_servers(project_id=project_id):
        driver.delete(server.id)
    for image in driver.conn.image.images(owner=project_id):
        driver.delete_image(image_id=image.id)
    driver.set_compute_quota(project_id=project_id, instances=-1, cores=-1, ram_mib=-1)
    driver.delete_project(project_id=project_id)


def _new_project(driver: OpenStackDriver, suffix: str):
    return driver.ensure_project(name=f"{PREFIX}-{suffix}", description="labcloud driver test")


@pytest.fixture(scope="module")
def tenant(driver: OpenStackDriver):
    project = _new_project(driver, "tenant")
    yield project
    _cleanup_project(driver, project.id)


@pytest.fixture(scope="module")
def flavors(driver: OpenStackDriver, tenant):
    small = driver.ensure_flavor(
        name=f"{PREFIX}-small", vcpus=1, ram_mib=128, disk_gib=1, is_public=False, project_ids=[tenant.id]
    )
    large = driver.ensure_flavor(
        name=f"{PREFIX}-large", vcpus=2, ram_mib=256, disk_gib=1, is_public=False, project_ids=[tenant.id]
    )
    yield small, large
    for name in (small.name, large.name):
        for flavor in driver.find_flavors(name=name):
            driver.delete_flavor(flavor_id=flavor.id)


@pytest.fixture(scope="module")
def tiny_qcow2(tmp_path_factory) -> Path:
    if TINY_QCOW2.exists():
        return TINY_QCOW2
    out = tmp_path_factory.mktemp("media") / "tiny.qcow2"  # a real (empty) qcow2 does as well
    subprocess.run([shutil.which("qemu-img") or "qemu-img", "create", "-q", "-f", "qcow2", str(out), "64M"], check=True)
    return out


@pytest.fixture(scope="module")
def image(driver: OpenStackDriver, tenant, tiny_qcow2):
    img = driver.upload_image(path=tiny_qcow2, name=f"{PREFIX}-tiny", project_id=tenant.id)
    yield img
    driver.delete_image(image_id=img.id)


@pytest.fixture
def servers(driver: OpenStackDriver):
    """Ids of the servers a test made: deleted (and confirmed gone) afterwards."""
    made: list[str] = []
    yield made
    for server_id in made:
        driver.delete(server_id)


@pytest.fixture
def keypairs(driver: OpenStackDriver):
    """Names of the keypairs a test imports: deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        driver.delete_keypair(name=name)


def ssh_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{raw} {PREFIX}@test"


# ------------------------------------------------------------------ cloud


def test_verify_reports_who_and_where(driver: OpenStackDriver):
    info = driver.verify()
    assert info.user_id and info.project_id
    assert {"compute", "identity", "image"} <= set(info.services)
    assert info.compute_endpoint.startswith("http://127.0.0.1:8774")
    assert tuple(map(int, info.compute_max_microversion.split("."))) >= (2, 37)  # networks='none'


def test_login_by_project_and_domain_ids(driver: OpenStackDriver, devcloud: DevCloud):
    """As an RC file or clouds.yaml may give it: the project and the user's domain by id, not by name."""
    info = driver.verify()
    by_id = OpenStackDriver(auth_of(devcloud, project_name=None, project_id=info.project_id, user_domain_id="default"))
    try:
        again = by_id.verify()
        assert (again.project_id, again.user_id) == (info.project_id, info.user_id)
    finally:
        by_id.close()


def test_cloud_down_is_host_unreachable_quickly(devcloud: DevCloud):
    down = OpenStackDriver(auth_of(devcloud, auth_url="http://127.0.0.1:9/v3"))
    t0 = time.monotonic()
    with pytest.raises(HostUnreachable, match=r"127\.0\.0\.1:9.*does not answer"):
        down.verify()
    assert time.monotonic() - t0 < 3
    with pytest.raises(HostUnreachable):
        down.list_servers()


def test_bad_credentials_are_an_auth_error(devcloud: DevCloud):
    wrong = OpenStackDriver(auth_of(devcloud, password="not-the-password"))
    with pytest.raises(AuthFailed, match="refused the portal's credentials"):
        wrong.verify()
    assert not isinstance(AuthFailed("x"), HostUnreachable)  # the portal must not retry it as an outage


def test_auth_needs_password_or_application_credential():
    with pytest.raises(ValueError, match="application credential"):
        OpenStackAuth(auth_url="http://127.0.0.1:5000/v3", username="u")
    auth = OpenStackAuth(
        auth_url="http://127.0.0.1:5000/v3", application_credential_id="id", application_credential_secret="s3cret"
    )
    assert "s3cret" not in repr(auth)


# ------------------------------------------------------------------ projects and flavors


def test_project_is_created_once_and_the_portal_user_is_member(driver: OpenStackDriver):
    first = _new_project(driver, "proj")
    try:
        assert first.created
        again = driver.ensure_project(name=first.name, description="changed")
        assert (again.id, again.created) == (first.id, False)
        assert driver.conn.identity.get_project(first.id).description == "changed"
        assert "member" in driver.project_roles(project_id=first.id)
        scoped = driver.project_conn(first.id)  # the role lets the portal act inside the project
        assert scoped.current_project_id == first.id
    finally:
        _cleanup_project(driver, first.id)
    assert driver.delete_project(project_id=first.id) is False


def test_concurrent_first_use_gives_everyone_the_same_project_flavor_and_keypair(devcloud: DevCloud, keypairs):
    """Workers launching a new tenant's first instances at once: none fails on Keystone's or Nova's 409."""
    from concurrent.futures import ThreadPoolExecutor

    drivers = [OpenStackDriver(auth_of(devcloud)) for _ in range(4)]
    key = ssh_public_key()
    keypairs.append(keypair_name_for(key))
    name = f"{PREFIX}-race"

    def first_use(drv: OpenStackDriver):
        project = drv.ensure_project(name=name)
        flavor = drv.ensure_flavor(name=f"{name}-f", vcpus=1, ram_mib=64, disk_gib=1)
        return project.id, flavor.id, drv.ensure_keypair(public_key=key).name

    try:
        with ThreadPoolExecutor(len(drivers)) as pool:
            results = list(pool.map(first_use, drivers))
        assert len(set(results)) == 1, results
    finally:
        admin = drivers[0]
        for flavor in admin.find_flavors(name=f"{name}-f"):
            admin.delete_flavor(flavor_id=flavor.id)
        project = admin.conn.identity.find_project(name, ignore_missing=True)
        if project is not None:
            _cleanup_project(admin, project.id)
        for drv in drivers:
            drv.close()


def test_flavor_sync_creates_recreates_and_keeps_private_access(driver: OpenStackDriver, tenant):
    other = _new_project(driver, "other")
    name = f"{PREFIX}-sync"
    try:
        created = driver.ensure_flavor(
            name=name, vcpus=1, ram_mib=128, disk_gib=1, is_public=False, project_ids=[tenant.id]
        )
        assert (created.action, created.is_public, created.project_ids) == ("created", False, (tenant.id,))
        assert driver.project_conn(tenant.id).compute.find_flavor(name, ignore_missing=True) is not None
        assert driver.project_conn(other.id).compute.find_flavor(name, ignore_missing=True) is None

        same = driver.ensure_flavor(
            name=name, vcpus=1, ram_mib=128, disk_gib=1, is_public=False, project_ids=[tenant.id, other.id]
        )
        assert (same.id, same.action) == (created.id, "unchanged")
        assert same.project_ids == tuple(sorted([tenant.id, other.id]))

        changed = driver.ensure_flavor(
            name=name, vcpus=2, ram_mib=192, disk_gib=1, is_public=False, project_ids=[other.id]
        )
        assert changed.action == "recreated" and changed.id != created.id
        assert (changed.vcpus, changed.ram_mib, changed.project_ids) == (2, 192, (other.id,))
        assert [f.id for f in driver.find_flavors(name=name)] == [changed.id]  # the old one is gone

        public = driver.ensure_flavor(name=name, vcpus=2, ram_mib=192, disk_gib=1, is_public=True)
        assert (public.action, public.is_public, public.project_ids) == ("recreated", True, ())
    finally:
        for flavor in driver.find_flavors(name=name):
            driver.delete_flavor(flavor_id=flavor.id)
        _cleanup_project(driver, other.id)


# ------------------------------------------------------------------ images


def test_image_upload_then_reuse_by_checksum(driver: OpenStackDriver, tenant, image, tiny_qcow2):
    sha512 = hashlib.sha512(tiny_qcow2.read_bytes()).hexdigest()
    md5 = hashlib.md5(tiny_qcow2.read_bytes()).hexdigest()  # noqa: S324 - Glance's legacy checksum
    assert (image.status, image.owner, image.visibility, image.reused) == ("active", tenant.id, "private", False)
    assert image.os_hash_value == sha512 and image.checksum == md5

    again = driver.upload_image(path=tiny_qcow2, name=f"{PREFIX}-tiny-again", project_id=tenant.id)
    assert (again.id, again.reused) == (image.id, True)
    by_md5 = driver.upload_image(path=tiny_qcow2, name=f"{PREFIX}-tiny-md5", project_id=tenant.id, checksum=md5)
    assert (by_md5.id, by_md5.reused) == (image.id, True)
    assert [i.id for i in driver.conn.image.images(owner=tenant.id, name=f"{PREFIX}-tiny-again")] == []

    other = _new_project(driver, "img")
    try:  # another project's private image is not reused: the other project gets its own
        theirs = driver.upload_image(path=tiny_qcow2, name=f"{PREFIX}-tiny-theirs", project_id=other.id)
        assert theirs.id != image.id and not theirs.reused and theirs.owner == other.id
    finally:
        _cleanup_project(driver, other.id)


def test_shared_image_members_are_added_listed_and_removed(driver: OpenStackDriver, tenant, tiny_qcow2):
    shared = driver.upload_image(path=tiny_qcow2, name=f"{PREFIX}-shared", visibility="shared")
    other = _new_project(driver, "member")
    try:
        assert shared.visibility == "shared" and driver.image_members(image_id=shared.id) == []
        assert driver.add_image_member(image_id=shared.id, project_id=tenant.id) is True
        assert driver.add_image_member(image_id=shared.id, project_id=tenant.id) is False  # already one
        assert driver.add_image_member(image_id=shared.id, project_id=other.id) is True
        assert driver.image_members(image_id=shared.id) == sorted([tenant.id, other.id])
        assert driver.remove_image_member(image_id=shared.id, project_id=other.id) is True
        assert driver.remove_image_member(image_id=shared.id, project_id=other.id) is False  # not one any more
        assert driver.image_members(image_id=shared.id) == [tenant.id]
    finally:
        driver.delete_image(image_id=shared.id)
        _cleanup_project(driver, other.id)


def test_glance_rejects_a_file_that_is_not_what_it_claims(driver: OpenStackDriver, tenant, tmp_path):
    bogus = tmp_path / "bogus.qcow2"
    bogus.write_bytes(os.urandom(256 * 1024))
    name = f"{PREFIX}-bogus"
    with pytest.raises(ImageRejected, match=r"(?i)glance rejected image .*bogus"):
        driver.upload_image(path=bogus, name=name, project_id=tenant.id)
    assert list(driver.conn.image.images(name=name)) == []  # nothing half-created left in Glance


# ------------------------------------------------------------------ quotas


def test_quota_pushed_read_back_and_nova_refusal_is_clear(driver: OpenStackDriver, flavors, tiny_qcow2, servers):
    small, _large = flavors
    project = _new_project(driver, "quota")
    try:
        quota = driver.set_compute_quota(project_id=project.id, instances=1, cores=2, ram_mib=512)
        assert (quota.instances, quota.cores, quota.ram_mib, quota.instances_used) == (1, 2, 512, 0)
        driver.ensure_flavor(
            name=small.name,
            vcpus=1,
            ram_mib=128,
            disk_gib=1,
            is_public=False,
            project_ids=[*small.project_ids, project.id],
        )
        img = driver.upload_image(path=tiny_qcow2, name=f"{PREFIX}-q", project_id=project.id)
        first = driver.create(
            project_id=project.id, name=f"{PREFIX}-q1", flavor_id=small.id, image_id=img.id, wait=True
        )
        servers.append(first)
        assert driver.compute_quota(project_id=project.id).instances_used == 1
        with pytest.raises(QuotaExceeded, match=r"(?i)quota exceeded.*instances"):
            driver.create(project_id=project.id, name=f"{PREFIX}-q2", flavor_id=small.id, image_id=img.id)
        assert [s.name for s in driver.list_servers(project_id=project.id)] == [f"{PREFIX}-q1"]  # nothing half-made
    finally:
        for server_id in servers:
            driver.delete(server_id)
        servers.clear()
        _cleanup_project(driver, project.id)


# ------------------------------------------------------------------ servers


def test_server_lifecycle(driver: OpenStackDriver, tenant, flavors, image, servers, keypairs):
    small, large = flavors
    public_key = ssh_public_key()
    keypairs.append(keypair_name_for(public_key))
    user_data = "#cloud-config\nhostname: lc-test\n"
    t0 = time.monotonic()
    server_id = driver.create(
        project_id=tenant.id,
        name=f"{PREFIX}-life",
        flavor_id=small.id,
        image_id=image.id,
        public_key=public_key,
        user_data=user_data,
        metadata={"labcloud-instance": "42"},
    )
    servers.append(server_id)
    state = driver.wait_for(server_id, states=("running",), timeout=120)
    print(f"\ncreate->ACTIVE {time.monotonic() - t0:.2f}s")
    assert isinstance(state, ServerState)
    assert (state.state, state.status, state.project_id, state.vcpus, state.ram_mib) == (
        "running",
        "ACTIVE",
        tenant.id,
        1,
        128,
    )
    assert state.key_name == keypairs[0]
    raw = driver.conn.compute.get_server(server_id)
    assert base64.b64decode(raw.user_data).decode() == user_data  # admin reads it back (2.3+)
    assert raw.metadata == {"labcloud-instance": "42"}

    steps = [
        (lambda: driver.stop(server_id), "shutoff", "SHUTOFF"),
        (lambda: driver.stop(server_id), "shutoff", "SHUTOFF"),  # idempotent: Nova's 409 is a no-op here
        (lambda: driver.start(server_id), "running", "ACTIVE"),
        (lambda: driver.reboot(server_id, kind="soft"), "running", "ACTIVE"),
        (lambda: driver.reboot(server_id, kind="hard"), "running", "ACTIVE"),
        (lambda: driver.pause(server_id), "paused", "PAUSED"),
        (lambda: driver.resume(server_id), "running", "ACTIVE"),
    ]
    for action, want_state, want_status in steps:
        after = action()
        assert (after.state, after.status, after.task_state) == (want_state, want_status, None)

    resized = driver.resize(server_id, flavor_id=large.id)
    assert (resized.state, resized.status, resized.vcpus, resized.ram_mib) == ("running", "ACTIVE", 2, 256)

    since = datetime.now(UTC) - timedelta(seconds=5)
    assert driver.delete(server_id) is True
    with pytest.raises(NotFound):
        driver.state(server_id)
    changed = {s.id: s for s in driver.list_servers(project_id=tenant.id, changes_since=since)}
    assert changed[server_id].state == "deleted"  # the watcher learns of deletions from changes-since
    assert driver.delete(server_id) is False
    assert driver.delete_keypair(name=state.key_name) is True
    assert driver.delete_keypair(name=state.key_name) is False


def test_keypair_is_imported_once_and_replaced_when_the_key_changes(driver: OpenStackDriver, keypairs):
    key = ssh_public_key()
    name = f"{PREFIX}-key"
    keypairs.extend([name, f"{name}-bad"])
    first = driver.ensure_keypair(public_key=key, name=name)
    assert first.created and first.fingerprint
    again = driver.ensure_keypair(public_key=key.rsplit(" ", 1)[0] + " another-comment", name=name)
    assert (again.created, again.fingerprint) == (False, first.fingerprint)
    other = driver.ensure_keypair(public_key=ssh_public_key(), name=name)
    assert other.created and other.fingerprint != first.fingerprint
    with pytest.raises(BackendError, match=r"keypair .*HTTP 400"):
        driver.ensure_keypair(public_key="ssh-rsa not-a-key", name=f"{name}-bad")


def test_state_list_and_errors_of_missing_servers(driver: OpenStackDriver, tenant, flavors, image, servers):
    small, _ = flavors
    with pytest.raises(NotFound, match="does not exist"):
        driver.state(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        driver.stop(str(uuid.uuid4()))
    server_id = driver.create(
        project_id=tenant.id, name=f"{PREFIX}-list", flavor_id=small.id, image_id=image.id, wait=True
    )
    servers.append(server_id)
    listed = {s.id: s for s in driver.list_servers(project_id=tenant.id)}
    assert listed[server_id].state == "running"
    assert server_id in {s.id for s in driver.list_servers()}  # all projects (full reconcile)
    future = datetime.now(UTC) + timedelta(minutes=5)
    assert server_id not in {s.id for s in driver.list_servers(project_id=tenant.id, changes_since=future)}
    with pytest.raises(BackendError, match=r"pause server .*HTTP 409"):
        driver.stop(server_id)
        driver.pause(server_id)  # Nova cannot pause a stopped server: a clear refusal, not a hang


def test_snapshot_becomes_an_image_of_the_tenant(driver: OpenStackDriver, tenant, flavors, image, servers):
    small, _ = flavors
    server_id = driver.create(
        project_id=tenant.id, name=f"{PREFIX}-snap", flavor_id=small.id, image_id=image.id, wait=True
    )
    servers.append(server_id)
    image_id = driver.snapshot(server_id, name=f"{PREFIX}-snap-1", metadata={"labcloud-snapshot": "1"})
    try:
        snap = driver.conn.image.get(f"/images/{image_id}").json()  # Glance's own flat view
        assert (snap["owner"], snap["name"]) == (tenant.id, f"{PREFIX}-snap-1")
        assert (snap["image_type"], snap["instance_uuid"], snap["labcloud-snapshot"]) == ("snapshot", server_id, "1")
        assert snap["status"] in ("queued", "active")  # the fake compute driver uploads no data
        assert driver.state(server_id).state == "running"
    finally:
        driver.delete_image(image_id=image_id)


def test_console_url_or_a_clear_error(driver: OpenStackDriver, tenant, flavors, image, servers):
    small, _ = flavors
    server_id = driver.create(
        project_id=tenant.id, name=f"{PREFIX}-con", flavor_id=small.id, image_id=image.id, wait=True
    )
    servers.append(server_id)
    try:
        console = driver.console(server_id)
    except ConsoleUnavailable as exc:  # the fake compute driver may not give one
        assert f"console of server {server_id} is not available" in exc.message
    else:
        assert console.type == "novnc" and console.protocol == "vnc"
        assert console.url.startswith("http://127.0.0.1:16080/") and "token=" in unquote(console.url)
    for kind in ("serial", "spice-html5"):  # consoles this cloud does not enable: Nova refuses, clearly
        with pytest.raises(ConsoleUnavailable, match=rf"{kind} console of server {server_id} is not available"):
            driver.console(server_id, console_type=kind)
    with pytest.raises(NotFound):
        driver.console(str(uuid.uuid4()))


def test_server_state_mapping():
    class Fake:
        def __init__(self, status, task_state=None, power_state=1):
            self.id, self.name, self.status, self.task_state, self.power_state = (
                "i",
                "n",
                status,
                task_state,
                power_state,
            )
            self.project_id = self.key_name = self.compute_host = self.updated_at = None
            self.flavor = {"original_name": "f", "vcpus": 1, "ram": 64}
            self.image, self.fault, self.addresses = {"id": "img"}, {}, {}

    cases = {
        ("ACTIVE", None, 1): "running",
        ("BUILD", "spawning", 0): "building",
        ("SHUTOFF", None, 4): "shutoff",
        ("PAUSED", None, 3): "paused",
        ("SUSPENDED", None, 7): "paused",
        ("ERROR", None, 0): "error",
        ("ACTIVE", "deleting", 1): "deleting",
        ("DELETED", None, 0): "deleted",
        ("REBOOT", "rebooting", 1): "running",
        ("VERIFY_RESIZE", None, 4): "shutoff",
        ("MIGRATING", "migrating", 1): "running",
    }
    for (status, task, power), want in cases.items():
        assert server_state_of(Fake(status, task, power)).state == want, status


def test_server_on_a_neutron_network_reports_its_address(driver: OpenStackDriver, tenant, flavors, image, servers):
    small, _ = flavors
    net_api = driver.project_conn(tenant.id).network
    net = net_api.create_network(name=f"{PREFIX}-net")
    try:
        net_api.create_subnet(network_id=net.id, ip_version=4, cidr="10.98.0.0/24")
        server_id = driver.create(
            project_id=tenant.id,
            name=f"{PREFIX}-net",
            flavor_id=small.id,
            image_id=image.id,
            network_id=net.id,
            wait=True,
        )
        servers.append(server_id)
        state = driver.state(server_id)
        assert len(state.addresses) == 1 and state.addresses[0].startswith("10.98.0.")
        driver.delete(server_id)
    finally:
        net_api.delete_network(net)
