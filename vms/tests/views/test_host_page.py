"""The host page: facts, the graphs of the host's own metrics, the instances placed on it; cloud admins only."""

from __future__ import annotations

import json
import re

from portal.factories import make_flavor, make_host, make_instance
from portal.testing import assert_constant_queries
from vms.models import Host
from vms.tests.watcher.test_metric_history import run_rounds


def page_data(html: str) -> dict:
    found = re.search(r'<script id="lc-metrics-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1)) if found else {}


def test_host_page_lists_its_instances_and_has_graphs(db, actors):
    host, other_host = make_host(), make_host()
    flavor = make_flavor()
    mine = make_instance(actors.tenant, flavor, host, name="web-1")
    theirs = make_instance(actors.other_tenant, flavor, host, name="db-1")
    elsewhere = make_instance(actors.tenant, flavor, other_host, name="far-away")
    run_rounds(host, [mine, theirs], [10.0, 20.0])
    admin = actors.client("cloud_admin", api=False)
    html = admin.get(f"/hosts/{host.pk}/").content.decode()
    assert f'href="/instances/{mine.pk}/"' in html and f'href="/instances/{theirs.pk}/"' in html
    assert "far-away" not in html and f"/instances/{elsewhere.pk}/" not in html
    assert actors.other_tenant.name in html and actors.tenant.name in html
    data = page_data(html)
    assert data["kind"] == "host" and data["range"] == "1h" and len(data["points"]) == 2
    assert data["points"][-1]["instances"] == 2
    assert data["api"] == f"/api/v1/hosts/{host.pk}/metrics/"
    assert 'id="lc-metrics-instances"' in html and 'data-lc-range="1mo"' in html
    # The range in the URL is the one drawn; a mistyped one shows the hour.
    assert page_data(admin.get(f"/hosts/{host.pk}/?range=1w").content.decode())["range"] == "1w"
    assert page_data(admin.get(f"/hosts/{host.pk}/?range=zz").content.decode())["range"] == "1h"
    # The hosts list links to each host's page.
    assert f'href="/hosts/{host.pk}/"' in admin.get("/hosts/").content.decode()


def test_host_page_is_for_cloud_admins_only(db, actors):
    host = make_host()
    for who in ("member", "tenant_admin", "outsider"):
        assert actors.client(who, api=False).get(f"/hosts/{host.pk}/").status_code == 404, who
    assert actors.client("cloud_admin", api=False).get(f"/hosts/{host.pk}/").status_code == 200
    assert actors.client("cloud_admin", api=False).get("/hosts/999999/").status_code == 404


def test_a_cloud_has_no_host_graphs(db, actors):
    cloud = Host.objects.create(
        name="lctest-cloud", kind=Host.Kind.OPENSTACK, auth_url="http://127.0.0.1:5000/v3", state=Host.State.UP
    )
    html = actors.client("cloud_admin", api=False).get(f"/hosts/{cloud.pk}/").content.decode()
    assert 'id="lc-host-no-metrics"' in html and "lc-metrics-data" not in html


def test_host_page_query_count_does_not_grow_with_instances(db, actors):
    host = make_host()
    flavor = make_flavor()
    admin = actors.client("cloud_admin", api=False)
    instances = []

    def more(n):
        instances.extend(make_instance(actors.tenant, flavor, host) for _ in range(n))
        run_rounds(host, instances, [5.0])

    def request():
        assert admin.get(f"/hosts/{host.pk}/").status_code == 200

    assert_constant_queries(more, request, budget=25)


def test_instance_page_draws_the_range_in_its_url(db, actors):
    host = make_host()
    instance = make_instance(actors.tenant, make_flavor(), host)
    run_rounds(host, [instance], [10.0] * 4)
    client = actors.client("member", api=False)
    hour = page_data(client.get(f"/instances/{instance.pk}/").content.decode())
    assert hour["kind"] == "instance" and hour["range"] == "1h" and len(hour["points"]) == 4 and hour["tier"] is None
    month = page_data(client.get(f"/instances/{instance.pk}/?range=1mo").content.decode())
    assert month["range"] == "1mo" and month["tier"] == 7200
    assert month["api"] == f"/api/v1/instances/{instance.pk}/metrics/"
    assert [r["key"] for r in month["ranges"]] == ["1h", "1d", "1w", "1mo"]
