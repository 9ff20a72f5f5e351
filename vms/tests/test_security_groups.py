"""Security groups (vms/security_groups.py): the services, the plan a host gets, quotas, the API's access matrix
and query budgets. The filters themselves on a real libvirt host and real guests: compute/test_firewall*.py."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from portal.factories import make_flavor, make_host, make_instance
from portal.models import AuditEvent, Quota
from portal.services import ConflictError, QuotaExceeded, ServiceError
from portal.testing import assert_access_matrix, assert_constant_queries, assert_problem
from vms.compute.base import FirewallPlan
from vms.models import DEFAULT_GROUP, Instance, SecurityGroup, SecurityGroupRule
from vms.security_groups import (
    add_rule,
    clean_instance_groups,
    create_security_group,
    delete_rule,
    delete_security_group,
    firewall_plan,
    security_group_usage,
    set_instance_security_groups,
    update_security_group,
)

pytestmark = pytest.mark.django_db

GROUPS = "/api/v1/security-groups/"
RULES = "/api/v1/security-group-rules/"


def group_url(group) -> str:
    return f"{GROUPS}{group.pk}/"


def rule_url(rule) -> str:
    return f"{RULES}{rule.pk}/"


@pytest.fixture
def host():
    return make_host()


@pytest.fixture
def web(actors):
    return create_security_group(actor=actors.member, tenant=actors.tenant, name="web", description="HTTP")


def default_of(tenant) -> SecurityGroup:
    return SecurityGroup.objects.get(tenant=tenant, name=DEFAULT_GROUP)


# ---------------------------------------------------------------- services


def test_every_tenant_has_a_default_group_with_openstacks_two_rules(actors):
    group = default_of(actors.tenant)
    rules = {(r.direction, r.protocol, r.remote_cidr, r.remote_group_id) for r in group.rules.all()}
    assert rules == {("egress", "any", "", None), ("ingress", "any", "", group.pk)}
    assert default_of(actors.other_tenant) != group


def test_a_new_group_allows_all_egress_and_no_ingress(actors, web):
    assert [(r.direction, r.protocol) for r in web.rules.all()] == [("egress", "any")]
    assert AuditEvent.objects.get(action="security_group.create").target_id == str(web.pk)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"direction": "sideways"}, "direction"),
        ({"direction": "ingress", "protocol": "gre"}, "protocol"),
        ({"direction": "ingress", "protocol": "any", "port_min": 22}, "port_min"),
        ({"direction": "ingress", "protocol": "tcp", "port_min": 0}, "port_min"),
        ({"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 70}, "port_max"),
        ({"direction": "ingress", "protocol": "tcp", "port_max": 70}, "port_min"),
        ({"direction": "ingress", "protocol": "icmp", "port_min": 300}, "port_min"),
        ({"direction": "ingress", "protocol": "tcp", "remote_cidr": "10.0.0.300/24"}, "remote_cidr"),
        ({"direction": "ingress", "protocol": "tcp", "remote_cidr": "2001:db8::/32"}, "remote_cidr"),
    ],
)
def test_bad_rules_are_refused_and_change_nothing(actors, web, values, field):
    before = SecurityGroupRule.objects.count()
    with pytest.raises(ServiceError) as caught:
        add_rule(actor=actors.member, group=web, **values)
    assert caught.value.field == field
    assert SecurityGroupRule.objects.count() == before


def test_a_remote_group_is_of_the_same_tenant_and_for_ingress(actors, web):
    other = default_of(actors.other_tenant)
    with pytest.raises(ServiceError) as caught:
        add_rule(actor=actors.member, group=web, direction="ingress", remote_group=other)
    assert caught.value.field == "remote_group"
    with pytest.raises(ServiceError) as caught:
        add_rule(actor=actors.member, group=web, direction="egress", remote_group=web)
    assert caught.value.field == "remote_group"
    with pytest.raises(ServiceError) as caught:
        add_rule(actor=actors.member, group=web, direction="ingress", remote_group=web, remote_cidr="10.0.0.0/8")
    assert caught.value.field == "remote_cidr"


def test_rules_are_normalised_and_not_doubled(actors, web):
    rule = add_rule(
        actor=actors.member, group=web, direction="ingress", protocol="tcp", port_min=80, remote_cidr="10.1.2.3/8"
    )
    assert (rule.port_min, rule.port_max, rule.remote_cidr) == (80, 80, "10.0.0.0/8")
    with pytest.raises(ConflictError):
        add_rule(actor=actors.member, group=web, direction="ingress", protocol="tcp", port_min=80, port_max=80,
                 remote_cidr="10.0.0.0/8")  # fmt: skip


def test_names_are_unique_per_tenant_and_default_is_kept(actors, web):
    with pytest.raises(ConflictError):
        create_security_group(actor=actors.member, tenant=actors.tenant, name=" web ")
    assert create_security_group(actor=actors.outsider, tenant=actors.other_tenant, name="web")
    with pytest.raises(ConflictError):
        update_security_group(actor=actors.member, group=default_of(actors.tenant), name="other")
    with pytest.raises(ConflictError):
        update_security_group(actor=actors.member, group=web, name=DEFAULT_GROUP)
    with pytest.raises(ConflictError):
        delete_security_group(actor=actors.member, group=default_of(actors.tenant))
    assert update_security_group(actor=actors.member, group=web, name="www", description="d").name == "www"


def test_only_members_and_cloud_admins_create_groups(actors):
    with pytest.raises(ServiceError):
        create_security_group(actor=actors.outsider, tenant=actors.tenant, name="x")
    assert create_security_group(actor=actors.cloud_admin, tenant=actors.tenant, name="x")


def test_a_group_in_use_is_not_deleted(actors, web):
    instance = make_instance(tenant=actors.tenant)
    instance.security_groups.set([web])
    with pytest.raises(ConflictError):
        delete_security_group(actor=actors.member, group=web)
    instance.security_groups.set([default_of(actors.tenant)])
    delete_security_group(actor=actors.member, group=web)
    assert not SecurityGroup.objects.filter(pk=web.pk).exists()


def test_deleting_a_group_takes_the_rules_that_name_it_as_remote(actors, web):
    default = default_of(actors.tenant)
    rule = add_rule(actor=actors.member, group=default, direction="ingress", protocol="tcp", port_min=22,
                    remote_group=web)  # fmt: skip
    delete_security_group(actor=actors.member, group=web)
    assert not SecurityGroupRule.objects.filter(pk=rule.pk).exists()


def test_quotas_count_groups_and_rules_default_included(actors):
    Quota.objects.filter(tenant=actors.tenant).update(security_groups=2, security_group_rules=4)
    assert security_group_usage([actors.tenant.pk])[actors.tenant.pk] == {
        "security_groups": 1,
        "security_group_rules": 2,
    }
    web = create_security_group(actor=actors.member, tenant=actors.tenant, name="web")
    with pytest.raises(QuotaExceeded) as caught:
        create_security_group(actor=actors.member, tenant=actors.tenant, name="db")
    assert caught.value.resource == "security_groups"
    add_rule(actor=actors.member, group=web, direction="ingress", protocol="tcp", port_min=80)
    with pytest.raises(QuotaExceeded) as caught:
        add_rule(actor=actors.member, group=web, direction="ingress", protocol="tcp", port_min=443)
    assert caught.value.resource == "security_group_rules"
    delete_rule(actor=actors.member, rule=web.rules.get(port_min=80))
    assert add_rule(actor=actors.member, group=web, direction="ingress", protocol="tcp", port_min=443)


def test_launch_groups_are_the_tenants(actors, web):
    assert clean_instance_groups(tenant=actors.tenant, groups=None) == [default_of(actors.tenant)]
    with pytest.raises(ServiceError):
        clean_instance_groups(tenant=actors.tenant, groups=[default_of(actors.other_tenant)])


def test_set_instance_groups_refuses_none_and_others(actors, web, host):
    instance = make_instance(tenant=actors.tenant, host=host)
    with pytest.raises(ServiceError):
        set_instance_security_groups(actor=actors.member, instance=instance, groups=[default_of(actors.other_tenant)])
    set_instance_security_groups(actor=actors.member, instance=instance, groups=[web])
    assert list(instance.security_groups.all()) == [web]


# ---------------------------------------------------------------- the plan


def test_the_plan_of_a_host_names_groups_ports_and_remote_nics(actors, web, host):
    default = default_of(actors.tenant)
    a = make_instance(tenant=actors.tenant, host=host, mac_address="52:54:00:00:00:0a")
    b = make_instance(tenant=actors.tenant, host=host, mac_address="52:54:00:00:00:0b")
    elsewhere = make_instance(tenant=actors.other_tenant, host=host, mac_address="52:54:00:00:00:0c")
    a.security_groups.set([web, default])
    b.security_groups.set([default])
    elsewhere.security_groups.set([default_of(actors.other_tenant)])
    add_rule(actor=actors.member, group=web, direction="ingress", protocol="tcp", port_min=8080, remote_group=default)
    plan = firewall_plan(tenant=actors.tenant, host=host)
    assert isinstance(plan, FirewallPlan)
    assert dict(plan.ports) == {
        str(a.uuid): (str(default.uuid), str(web.uuid)),  # by name
        str(b.uuid): (str(default.uuid),),
    }
    groups = dict(plan.groups)
    (from_default,) = [r for r in groups[str(web.uuid)] if r.direction == "in"]
    assert (from_default.protocol, from_default.port_min, from_default.port_max) == ("tcp", 8080, 8080)
    assert from_default.remote_group and from_default.remote_macs == ("52:54:00:00:00:0a", "52:54:00:00:00:0b")
    (same_group,) = [r for r in groups[str(default.uuid)] if r.direction == "in"]
    assert same_group.protocol == "all" and same_group.remote_macs == ("52:54:00:00:00:0a", "52:54:00:00:00:0b")
    assert plan.unused_groups == ()
    b.security_groups.set([web])
    a.security_groups.set([web])
    assert firewall_plan(tenant=actors.tenant, host=host).unused_groups == (str(default.uuid),)


# ---------------------------------------------------------------- API


def test_api_group_matrix(actors, web):
    assert_access_matrix(
        actors,
        method="GET",
        url=group_url(web),
        expected={"anonymous": (401, 403), "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    assert_access_matrix(
        actors,
        method="PATCH",
        url=group_url(web),
        data={"description": "changed"},
        expected={"anonymous": (401, 403), "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )

    def fresh() -> str:
        return group_url(create_security_group(actor=actors.cloud_admin, tenant=actors.tenant, name=f"g{fresh.n}"))

    fresh.n = 0

    def counted() -> str:
        fresh.n += 1
        return fresh()

    assert_access_matrix(
        actors,
        method="DELETE",
        url=counted,
        expected={"anonymous": (401, 403), "outsider": 404, "member": 204, "tenant_admin": 204, "cloud_admin": 204},
    )


def test_api_create_group_and_rules(actors):
    client = actors.client("member")
    response = client.post(GROUPS, {"tenant": actors.tenant.pk, "name": "web"}, format="json")
    assert response.status_code == 201, response.content
    group = response.json()
    assert [r["direction"] for r in group["rules"]] == ["egress"]
    response = client.post(
        RULES,
        {"group": group["id"], "direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 81},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["port_max"] == 81
    assert client.get(f"{RULES}?group={group['id']}").json()["count"] == 2
    bad = {"group": group["id"], "direction": "ingress", "protocol": "tcp", "port_min": 90, "port_max": 80}
    problem = assert_problem(client.post(RULES, bad, format="json"), 400)
    assert "port" in str(problem).lower()
    # Another tenant's group "does not exist".
    outsider = actors.client("outsider")
    assert outsider.post(RULES, {"group": group["id"], "direction": "ingress"}, format="json").status_code == 400
    assert outsider.delete(rule_url(SecurityGroupRule.objects.get(port_min=80))).status_code == 404


def test_api_instance_groups(actors, web, host):
    instance = make_instance(tenant=actors.tenant, host=host)
    instance.security_groups.set([default_of(actors.tenant)])
    url = f"/api/v1/instances/{instance.pk}/security-groups/"
    assert_access_matrix(
        actors,
        method="GET",
        url=url,
        expected={"anonymous": (401, 403), "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    client = actors.client("member")
    response = client.put(url, {"security_groups": [web.pk]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"security_groups": [web.pk]}
    assert client.put(url, {"security_groups": []}, format="json").status_code == 400
    other = default_of(actors.other_tenant)
    assert client.put(url, {"security_groups": [other.pk]}, format="json").status_code == 400
    assert list(Instance.objects.get(pk=instance.pk).security_groups.all()) == [web]


def test_api_lists_have_query_budgets(actors):
    Quota.objects.filter(tenant=actors.tenant).update(security_groups=-1, security_group_rules=-1)

    def make_rows(n: int) -> None:
        start = SecurityGroup.objects.count()
        for i in range(n):
            group = create_security_group(actor=actors.cloud_admin, tenant=actors.tenant, name=f"q{start + i}")
            add_rule(actor=actors.cloud_admin, group=group, direction="ingress", protocol="tcp", port_min=22)

    client = actors.client("member")
    assert_constant_queries(make_rows, lambda: client.get(GROUPS), budget=8)
    assert_constant_queries(make_rows, lambda: client.get(RULES), budget=6)


# ---------------------------------------------------------------- dashboard


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_pages_matrix(actors, web):
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("security_groups"),
        api=False,
        expected={"anonymous": 302, "outsider": 200, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    assert_access_matrix(
        actors,
        method="get",
        url=reverse("security_group_detail", args=[web.pk]),
        api=False,
        expected={"anonymous": 302, "outsider": 404, "member": 200, "tenant_admin": 200, "cloud_admin": 200},
    )
    html = login(actors.member).get(reverse("security_groups")).content.decode()
    assert 'data-group="web"' in html and f'data-group="{DEFAULT_GROUP}"' in html
    assert 'data-group="web"' not in login(actors.outsider).get(reverse("security_groups")).content.decode()


def test_dashboard_create_add_and_remove_a_rule(actors):
    client = login(actors.member)
    response = client.post(reverse("security_group_create"), {"name": "db", "description": "PostgreSQL"})
    assert response.status_code == 302
    group = SecurityGroup.objects.get(tenant=actors.tenant, name="db")
    url = reverse("security_group_rule_add", args=[group.pk])
    response = client.post(url, {"direction": "ingress", "protocol": "tcp", "port_min": "5432", "remote_group": ""})
    assert response.status_code == 302
    rule = group.rules.get(port_min=5432)
    page = client.get(reverse("security_group_detail", args=[group.pk])).content.decode()
    assert f'data-rule="{rule.pk}"' in page and "5432" in page
    bad = client.post(url, {"direction": "ingress", "protocol": "tcp", "port_min": "90", "port_max": "80"})
    assert bad.status_code == 200 and "is-invalid" in bad.content.decode()
    delete = reverse("security_group_rule_delete", args=[group.pk, rule.pk])
    assert login(actors.outsider).post(delete).status_code == 404
    assert client.post(delete).status_code == 302
    assert not group.rules.filter(pk=rule.pk).exists()
    assert login(actors.outsider).post(reverse("security_group_delete", args=[group.pk])).status_code == 404
    assert client.post(reverse("security_group_delete", args=[group.pk])).status_code == 302
    assert not SecurityGroup.objects.filter(pk=group.pk).exists()


def test_dashboard_instance_groups(actors, web, host):
    instance = make_instance(tenant=actors.tenant, host=host)
    instance.security_groups.set([default_of(actors.tenant)])
    page = login(actors.member).get(reverse("instance_detail", args=[instance.pk])).content.decode()
    assert 'id="lc-instance-security-groups"' in page
    url = reverse("instance_security_groups", args=[instance.pk])
    assert login(actors.outsider).post(url, {"security_groups": [web.pk]}).status_code == 404
    assert login(actors.member).post(url, {"security_groups": [web.pk]}).status_code == 302
    assert list(instance.security_groups.all()) == [web]
    assert login(actors.member).post(url, {}).status_code == 302  # none: refused with a message
    assert list(instance.security_groups.all()) == [web]


@pytest.mark.parametrize("role", ["member", "cloud_admin"])
def test_groups_page_queries(actors, role):
    Quota.objects.filter(tenant=actors.tenant).update(security_groups=-1, security_group_rules=-1)

    def make_rows(n: int) -> None:
        start = SecurityGroup.objects.count()
        for i in range(n):
            create_security_group(actor=actors.member, tenant=actors.tenant, name=f"p{start + i}")

    client = login(actors.user(role))

    def request():
        assert client.get(reverse("security_groups")).status_code == 200

    assert_constant_queries(make_rows, request, budget=8)


# ---------------------------------------------------------------- admin


def test_admin_lists_creates_and_deletes_through_the_services(actors, web):
    client = login(actors.cloud_admin)
    listing = client.get("/admin/vms/securitygroup/")
    assert listing.status_code == 200 and "web" in listing.content.decode()
    assert client.get(f"/admin/vms/securitygroup/{web.pk}/change/").status_code == 200
    inline = {"rules-TOTAL_FORMS": "0", "rules-INITIAL_FORMS": "0"}  # the rules' (read-only) inline
    taken = client.post("/admin/vms/securitygroup/add/", {"tenant": actors.tenant.pk, "name": "web", **inline})
    assert taken.status_code == 200 and "already has" in taken.content.decode()
    made = client.post("/admin/vms/securitygroup/add/", {"tenant": actors.tenant.pk, "name": "ops", **inline})
    assert made.status_code == 302
    group = SecurityGroup.objects.get(tenant=actors.tenant, name="ops")
    assert [r.direction for r in group.rules.all()] == ["egress"]
    assert AuditEvent.objects.filter(action="security_group.create", target_id=str(group.pk)).exists()
    assert client.post(f"/admin/vms/securitygroup/{group.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not SecurityGroup.objects.filter(pk=group.pk).exists()
    default = default_of(actors.tenant)  # refused by the service: said, not a server error
    refused = client.post(f"/admin/vms/securitygroup/{default.pk}/delete/", {"post": "yes"}, follow=True)
    assert refused.status_code == 200 and "cannot be deleted" in refused.content.decode()
    assert SecurityGroup.objects.filter(pk=default.pk).exists()
    assert login(actors.member).get("/admin/vms/securitygroup/").status_code == 302


# ---------------------------------------------------------------- the cloud's mapping (no cloud)


def test_rules_map_to_neutron_rules():
    from portal.backends.base import FirewallRule
    from vms.compute.openstack.firewall import neutron_rule

    ids = {"g-uuid": "neutron-g"}
    tcp = neutron_rule(FirewallRule(direction="in", protocol="tcp", port_min=22, remote_cidr="10.0.0.0/8"), ids)
    assert tcp.attrs() == {
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 22,
        "port_range_max": 22,
        "remote_ip_prefix": "10.0.0.0/8",
    }
    anything = neutron_rule(FirewallRule(direction="out"), ids)
    assert anything.attrs() == {"direction": "egress", "ethertype": "IPv4"}
    assert anything.key() == neutron_rule(FirewallRule(direction="out", remote_cidr="0.0.0.0/0"), ids).key()
    ping = neutron_rule(FirewallRule(direction="in", protocol="icmp", port_min=8), ids)
    assert (ping.port_range_min, ping.port_range_max) == (8, None)  # a type, every code
    grouped = neutron_rule(FirewallRule(direction="in", remote_group=True, remote_group_id="g-uuid"), ids)
    assert grouped.attrs()["remote_group_id"] == "neutron-g"


def test_a_cloud_without_a_network_takes_no_group_but_default(actors, web):
    from vms import lifecycle
    from vms.compute.base import MissingCapability
    from vms.models import Host, PlacementRule
    from vms.tests.views.test_instances import make_image

    cloud = Host.objects.create(
        name="cloud", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:9/v3", state=Host.State.UP
    )
    PlacementRule.objects.create(tenant=actors.tenant, host=cloud)
    image, flavor = make_image(actors.tenant, name="debian"), make_flavor("lctest.sg", disk_gib=10)
    with pytest.raises(MissingCapability) as caught:
        lifecycle.launch_instances(
            actor=actors.member, tenant=actors.tenant, name="x", flavor=flavor, image=image, security_groups=[web]
        )
    assert caught.value.field == "security_groups" and "cloud" in caught.value.message
    assert not Instance.objects.exists()  # nothing half-made
    launch = lifecycle.launch_instances(actor=actors.member, tenant=actors.tenant, name="y", flavor=flavor, image=image)
    assert list(launch.instances[0].security_groups.all()) == []  # "default" is not applied there
    cloud.os_network = "net-1"
    cloud.save()
    launch = lifecycle.launch_instances(
        actor=actors.member, tenant=actors.tenant, name="z", flavor=flavor, image=image, security_groups=[web]
    )
    assert list(launch.instances[0].security_groups.all()) == [web]  # a cloud with a network applies them


def test_an_adopted_instance_takes_no_groups(actors, web, host):
    from vms.compute.base import MissingCapability

    adopted = make_instance(tenant=actors.tenant, host=host, adopted=True)
    with pytest.raises(MissingCapability):
        set_instance_security_groups(actor=actors.member, instance=adopted, groups=[web])
    response = actors.client("member").put(
        f"/api/v1/instances/{adopted.pk}/security-groups/", {"security_groups": [web.pk]}, format="json"
    )
    assert_problem(response, 409)
    assert not adopted.security_groups.exists()


def test_a_group_deleted_meanwhile_is_refused_not_a_server_error(actors, web):
    from vms.security_groups import check_groups_exist

    check_groups_exist([web])
    gone = SecurityGroup.objects.get(pk=web.pk)
    SecurityGroup.objects.filter(pk=web.pk).delete()
    with pytest.raises(ConflictError) as caught:
        check_groups_exist([gone])
    assert caught.value.field == "security_groups"
