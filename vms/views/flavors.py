"""The flavors page: what the active tenant may launch (cloud admins: every flavor, with links to change them)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from portal.access import is_cloud_admin
from portal.sorting import sort_by
from portal.views import current_tenant
from vms.models import Flavor
from vms.selectors import flavors_for
from vms.views.common import admin_url

# The flavor list's sortable columns (portal.sorting); in the model's order unless asked otherwise.
SORT_COLUMNS = {
    "name": ("name", "id"),
    "vcpus": ("vcpus", "ram_mib", "name"),
    "ram": ("ram_mib", "vcpus", "name"),
    "disk": ("disk_gib", "name"),
    "visibility": ("is_public", "name"),
}


@login_required
def flavor_list(request):
    tenant = current_tenant(request)
    staff = is_cloud_admin(request.user)
    # Staff manage every flavor, disabled ones included; everyone else sees what the active tenant may launch.
    if staff:
        flavors = flavors_for(user=request.user)
    elif tenant is not None:
        flavors = flavors_for(user=request.user, tenant=tenant)
    else:
        flavors = Flavor.objects.none()  # the page shows how to join a tenant instead
    flavors, sorting = sort_by(flavors, request.GET.get("sort", ""), SORT_COLUMNS)
    flavors = list(flavors)
    if staff:
        for flavor in flavors:
            flavor.admin_url = admin_url("vms_flavor_change", flavor.pk)
    return render(
        request,
        "vms/flavors.html",
        {
            "tenant": tenant,
            "flavors": flavors,
            "staff": staff,
            "sorting": sorting,
            "add_url": admin_url("vms_flavor_add") if staff else None,
        },
    )
