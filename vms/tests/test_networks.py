"""Networks: the services (staff only, validation, in-use rules, ensure_on_host on test:///default),
/api/v1/networks/, the dashboard page and the admin."""

from __future__ import annotations

import contextlib
import itertools
import re

import libvirt
import pytest
from django.test import Client
from django.urls import reverse

from portal.backends.base import BackendError
from portal.backends.libvirt.connection import connect
from portal.backends.libvirt.network import network_mode
from portal.models import AuditEvent
from portal.services import ConflictError, ServiceError
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.models import Flavor, Host, Instance, Network
from vms.networks import create_network, delete_network, ensure_on_host, networks_for, update_network
from vms.tests.conftest import PREFIX, TEST_URI

pytestmark = pytest.mark.django_db
URL = "/api/v1/networks/"
_serial = itertools.count()


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def networks(actors):
    staff = actors.cloud_admin
    public = create_network(actor=staff, name="shared-nat", mode="nat", cidr="192.168.150.0/24", is_public=True)
    a = create_network(actor=staff, name="lab-a", mode="isolated", cidr="10.254.1.0/24", tenants=[actors.tenant])
    b = create_network(actor=staff, name="lab-b", mode="isolated", tenants=[actors.other_tenant])
    unshared = create_network(actor=staff, name="uplink", mode="bridge", bridge="br0")
    return {"public": public, "a": a, "b": b, "unshared": unshared}


def use(network: Network, tenant) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(name="net.f", defaults={"vcpus": 1, "ram_mib": 64, "disk_gib": 1})
    return Instance.objects.create(
        tenant=tenant, name=f"vm{next(_serial)}", flavor=flavor, vcpus=1, ram_mib=64, disk_gib=1, network=network
    )


# ---------------------------------------------------------------- services


def test_create_network_defaults_and_audit(actors):
    network = create_network(actor=actors.cloud_admin, name="Lab Net 1", mode="isolated", cidr="10.254.2.0/24")
    assert network.libvirt_name == "lab-net-1"
    assert network.dhcp is True and network.is_public is False
    event = AuditEvent.objects.get(action="network.create")
    assert event.detail == {"mode": "isolated", "libvirt_name": "lab-net-1", "cidr": "10.254.2.0/24"}


@pytest.mark.parametrize("role", ["member", "tenant_admin", "outsider"])
def test_network_services_are_for_cloud_admins(actors, role):
    user = actors.user(role)
    with pytest.raises(ServiceError) as info:
        create_network(actor=user, name="n", mode="isolated")
    assert info.value.status == 403
    network = create_network(actor=actors.cloud_admin, name="n", mode="isolated")
    with pytest.raises(ServiceError):
        update_network(actor=user, network=network, description="x")
    with pytest.raises(ServiceError):
        delete_network(actor=user, network=network)
    network.refresh_from_db()
    assert network.description == ""


@pytest.mark.parametrize(
    ("kwargs", "field", "needle"),
    [
        ({"name": " "}, "name", "needs a name"),
        ({"mode": "route"}, "mode", "mode"),
        ({"libvirt_name": "bad name!"}, "libvirt_name", "letters"),
        ({"libvirt_name": "x" * 51}, "libvirt_name", "50"),
        ({"mode": "nat"}, "cidr", "NAT network needs a subnet"),
        ({"cidr": "10.254.0.0/8"}, "cidr", "between /16 and /29"),
        ({"cidr": "10.254.0.0/30"}, "cidr", "between /16 and /29"),
        ({"cidr": "fd00::/64"}, "cidr", "IPv4"),
        ({"cidr": "10.254.3.7/24"}, "cidr", "did you mean 10.254.3.0/24"),
        ({"cidr": "nonsense"}, "cidr", "not a subnet"),
        ({"bridge": "br0"}, "bridge", "existing bridge"),
        ({"mode": "bridge"}, "bridge", "host bridge"),
        ({"mode": "bridge", "bridge": "bridge-name-too-long"}, "bridge", "15"),
        ({"mode": "bridge", "bridge": "br0", "cidr": "10.254.4.0/24"}, "cidr", "leave the subnet empty"),
    ],
)
def test_create_refuses_bad_definitions(actors, kwargs, field, needle):
    values = {"name": "n", "mode": "isolated", **kwargs}
    with pytest.raises(ServiceError) as info:
        create_network(actor=actors.cloud_admin, **values)
    assert info.value.field == field
    assert needle in info.value.message
    assert not Network.objects.exists() and not AuditEvent.objects.exists()


def test_conflicts(actors, networks):
    staff = actors.cloud_admin
    with pytest.raises(ConflictError) as info:
        create_network(actor=staff, name="lab-a", mode="isolated")
    assert info.value.field == "name"
    with pytest.raises(ConflictError) as info:
        create_network(actor=staff, name="other", libvirt_name="lab-a", mode="isolated")
    assert info.value.field == "libvirt_name"
    with pytest.raises(ConflictError) as info:
        create_network(actor=staff, name="overlap", mode="isolated", cidr="10.254.0.0/16")
    assert info.value.field == "cidr" and "lab-a" in info.value.message
    assert Network.objects.count() == 4


def test_update_network(actors, networks):
    staff = actors.cloud_admin
    network = update_network(
        actor=staff, network=networks["a"], description="for labs", tenants=[actors.tenant, actors.other_tenant]
    )
    assert network.description == "for labs"
    assert set(network.tenants.all()) == {actors.tenant, actors.other_tenant}
    # leaving bridge mode drops the bridge name; entering it drops the subnet
    uplink = update_network(actor=staff, network=networks["unshared"], mode="isolated")
    assert (uplink.mode, uplink.bridge) == ("isolated", "")
    lab = update_network(actor=staff, network=networks["a"], mode="bridge", bridge="br1")
    assert (lab.mode, lab.bridge, lab.cidr) == ("bridge", "br1", "")
    with pytest.raises(ServiceError):
        update_network(actor=staff, network=networks["b"], uuid="x")
    with pytest.raises(ConflictError):
        update_network(actor=staff, network=networks["b"], name="shared-nat")


def test_host_side_fields_are_frozen_while_instances_use_the_network(actors, networks):
    staff = actors.cloud_admin
    use(networks["a"], actors.tenant)
    with pytest.raises(ConflictError) as info:
        update_network(actor=staff, network=networks["a"], cidr="10.254.9.0/24")
    assert info.value.field == "cidr"
    networks["a"].refresh_from_db()
    assert networks["a"].cidr == "10.254.1.0/24"
    assert update_network(actor=staff, network=networks["a"], description="ok", name="lab-a2").name == "lab-a2"


def test_delete_refuses_networks_in_use(actors, networks):
    staff = actors.cloud_admin
    instance = use(networks["a"], actors.tenant)
    with pytest.raises(ConflictError) as info:
        delete_network(actor=staff, network=networks["a"])
    assert "used by instances" in info.value.message
    assert Network.objects.filter(pk=networks["a"].pk).exists()
    instance.delete()
    delete_network(actor=staff, network=networks["a"])
    assert not Network.objects.filter(name="lab-a").exists()
    assert AuditEvent.objects.filter(action="network.delete").exists()


def test_networks_for(actors, networks):
    def names(qs):
        return {n.name for n in qs}

    assert names(networks_for(user=actors.member)) == {"shared-nat", "lab-a"}
    assert names(networks_for(user=actors.outsider)) == {"shared-nat", "lab-b"}
    assert names(networks_for(user=actors.cloud_admin)) == {"shared-nat", "lab-a", "lab-b", "uplink"}
    assert names(networks_for(user=actors.cloud_admin, tenant=actors.other_tenant)) == {"shared-nat", "lab-b"}
    assert names(Network.objects.restrict(None)) == set()


@pytest.fixture
def test_host(db):
    host = Host.objects.create(name="unit", uri=TEST_URI)
    yield host
    conn = connect(TEST_URI)
    for net in conn.listAllNetworks(0):
        if net.name().startswith(PREFIX):
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()


def test_ensure_on_host_uses_the_test_driver(actors, test_host):
    network = create_network(
        actor=actors.cloud_admin, name="unit net", libvirt_name=f"{PREFIX}unit-svc", mode="nat", cidr="10.254.5.0/24"
    )
    assert ensure_on_host(network=network, host=test_host) == f"{PREFIX}unit-svc"
    assert ensure_on_host(network=network, host=test_host) == f"{PREFIX}unit-svc"
    net = connect(TEST_URI).networkLookupByName(f"{PREFIX}unit-svc")
    assert net.isActive() and network_mode(net.XMLDesc(0)) == "nat"


def test_ensure_on_host_reports_a_mode_clash(actors, test_host):
    network = create_network(actor=actors.cloud_admin, name="clash", libvirt_name="default", mode="isolated")
    with pytest.raises(BackendError, match="mode"):
        ensure_on_host(network=network, host=test_host)  # test:///default's own "default" is NAT: left alone
    assert network_mode(connect(TEST_URI).networkLookupByName("default").XMLDesc(0)) == "nat"


# ---------------------------------------------------------------- API


def detail(network) -> str:
    return f"{URL}{network.pk}/"


def test_api_list_matrix(actors, networks):
    assert_access_matrix(
        actors,
        method="get",
        url=URL,
        expected={"anonymous": 401, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_api_lists_what_each_may_use(actors, networks):
    def names(client, **params):
        response = client.get(URL, params)
        assert response.status_code == 200
        return {row["name"] for row in response.json()["results"]}

    assert names(actors.client("member")) == {"shared-nat", "lab-a"}
    assert names(actors.client("outsider")) == {"shared-nat", "lab-b"}
    staff = actors.client("cloud_admin")
    assert names(staff) == {"shared-nat", "lab-a", "lab-b", "uplink"}
    assert names(staff, tenant=actors.tenant.pk) == {"shared-nat", "lab-a"}
    assert names(staff, mode="bridge") == {"uplink"}
    assert "tenants" not in actors.client("member").get(URL).json()["results"][0]
    assert staff.get(detail(networks["a"])).json()["tenants"] == [actors.tenant.pk]


def test_api_retrieve_matrix(actors, networks):
    assert_access_matrix(
        actors,
        method="get",
        url=detail(networks["a"]),
        expected={"anonymous": 401, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    assert_access_matrix(
        actors,
        method="get",
        url=detail(networks["unshared"]),
        expected={"anonymous": 401, "outsider": 404, "member": 404, "tenant_admin": 404, "cloud_admin": 200},
    )


def test_api_create_matrix(actors):
    def url():
        Network.objects.filter(name="new-net").delete()
        return URL

    assert_access_matrix(
        actors,
        method="post",
        url=url,
        data={"name": "new-net", "mode": "isolated", "cidr": "10.254.6.0/24", "tenants": [actors.tenant.pk]},
        expected={"anonymous": 401, "outsider": 403, "member": 403, "tenant_admin": 403, "cloud_admin": 201},
    )
    network = Network.objects.get(name="new-net")
    assert network.libvirt_name == "new-net" and list(network.tenants.all()) == [actors.tenant]


def test_api_patch_matrix(actors, networks):
    assert_access_matrix(
        actors,
        method="patch",
        url=detail(networks["a"]),
        data={"description": "changed"},
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 200},
    )


def test_api_delete_matrix(actors):
    def url():
        network = create_network(
            actor=actors.cloud_admin, name=f"tmp{next(_serial)}", mode="isolated", tenants=[actors.tenant]
        )
        return detail(network)

    assert_access_matrix(
        actors,
        method="delete",
        url=url,
        expected={"anonymous": 401, "outsider": 404, "member": 403, "tenant_admin": 403, "cloud_admin": 204},
    )


def test_api_errors_are_problems(actors, networks):
    staff = actors.client("cloud_admin")
    body = assert_problem(staff.post(URL, {"name": "x", "mode": "nat"}, format="json"), 400)
    assert "cidr" in body["errors"]
    body = assert_problem(staff.post(URL, {"name": "lab-a", "mode": "isolated"}, format="json"), 409, "conflict")
    assert "name" in body["errors"]
    body = assert_problem(staff.post(URL, {"name": "y", "mode": "route"}, format="json"), 400)
    assert "mode" in body["errors"]
    use(networks["a"], actors.tenant)
    assert_problem(staff.delete(detail(networks["a"])), 409, "conflict")
    assert_problem(staff.patch(detail(networks["a"]), {"cidr": "10.254.8.0/24"}, format="json"), 409)
    assert Network.objects.count() == 4


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_api_list_queries(actors, role):
    def make_rows(n: int) -> None:
        for _ in range(n):
            i = next(_serial)
            create_network(actor=actors.cloud_admin, name=f"p{i}", mode="isolated", is_public=True)
            create_network(
                actor=actors.cloud_admin,
                name=f"s{i}",
                mode="isolated",
                tenants=[actors.tenant, actors.other_tenant],
            )

    client = actors.client(role)

    def request():
        assert client.get(URL, {"page_size": 100}).status_code == 200

    assert_constant_queries(make_rows, request, budget=6)


# ---------------------------------------------------------------- dashboard


def test_networks_page_matrix(actors, networks):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("networks"),
        api=False,
        expected={"anonymous": 302, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )


def test_networks_page_sorts_by_its_column_headers(actors, networks):
    client = login(actors.cloud_admin)

    def names(**params) -> list[str]:
        return re.findall(r'data-network="([^"]+)"', client.get(reverse("networks"), params).content.decode())

    assert names(sort="name") == ["lab-a", "lab-b", "shared-nat", "uplink"]
    assert names(sort="-name") == ["uplink", "shared-nat", "lab-b", "lab-a"]
    assert names(sort="mode") == ["uplink", "lab-a", "lab-b", "shared-nat"]  # bridge, isolated, nat
    assert names(sort="-visibility")[0] == "shared-nat"


def test_networks_page_content(actors, networks):
    html = login(actors.member).get(reverse("networks")).content.decode()
    assert 'data-network="shared-nat"' in html and 'data-network="lab-a"' in html
    assert 'data-network="lab-b"' not in html and 'data-network="uplink"' not in html
    assert reverse("admin:vms_network_add") not in html
    assert reverse("networks") in html  # the nav link
    staff = login(actors.cloud_admin).get(reverse("networks")).content.decode()
    assert all(f'data-network="{name}"' in staff for name in ("shared-nat", "lab-a", "lab-b", "uplink"))
    assert reverse("admin:vms_network_change", args=[networks["a"].pk]) in staff
    assert reverse("admin:vms_network_add") in staff


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_networks_page_queries(actors, role):
    def make_rows(n: int) -> None:
        for _ in range(n):
            i = next(_serial)
            create_network(actor=actors.cloud_admin, name=f"q{i}", mode="isolated", tenants=[actors.tenant])
            create_network(actor=actors.cloud_admin, name=f"r{i}", mode="isolated", is_public=True)

    client = login(actors.user(role))

    def request():
        assert client.get(reverse("networks")).status_code == 200

    assert_constant_queries(make_rows, request, budget=8)


# ---------------------------------------------------------------- admin


def _admin_form(**values):
    form = {
        "name": "adm-net",
        "libvirt_name": "",
        "mode": "isolated",
        "bridge": "",
        "cidr": "10.254.10.0/24",
        "dhcp": "on",
        "description": "",
    }
    form.update(values)
    return form


def test_admin_saves_through_the_services(actors, networks):
    client = login(actors.cloud_admin)
    response = client.post(reverse("admin:vms_network_add"), _admin_form(tenants=[actors.tenant.pk]))
    assert response.status_code == 302, response.content.decode()[:3000]
    network = Network.objects.get(name="adm-net")
    assert network.libvirt_name == "adm-net" and list(network.tenants.all()) == [actors.tenant]
    assert AuditEvent.objects.filter(action="network.create", target_id=str(network.pk)).exists()

    response = client.post(reverse("admin:vms_network_add"), _admin_form(name="bad", cidr="10.254.10.5/24"))
    assert response.status_code == 200 and "did you mean 10.254.10.0/24" in response.content.decode()
    response = client.post(reverse("admin:vms_network_add"), _admin_form(name="dup", cidr="10.254.10.0/25"))
    assert response.status_code == 200 and "overlaps" in response.content.decode()
    assert not Network.objects.filter(name__in=["bad", "dup"]).exists()

    change = reverse("admin:vms_network_change", args=[network.pk])
    response = client.post(change, _admin_form(description="edited", libvirt_name="adm-net"))
    assert response.status_code == 302, response.content.decode()[:3000]
    network.refresh_from_db()
    assert network.description == "edited" and list(network.tenants.all()) == []
    assert AuditEvent.objects.filter(action="network.update", target_id=str(network.pk)).exists()

    use(network, actors.tenant)
    response = client.post(change, _admin_form(libvirt_name="adm-net", cidr="10.254.11.0/24"))
    assert response.status_code == 200 and "used by instances" in response.content.decode()

    response = client.post(reverse("admin:vms_network_delete", args=[networks["b"].pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Network.objects.filter(pk=networks["b"].pk).exists()
    assert AuditEvent.objects.filter(action="network.delete").exists()
